"""tilde expand --model M --collection FILE --output FILE [--top-k 200] [--shard i/n]
   tilde expand --concat SHARD_FILE... --output FILE"""

from __future__ import annotations

import argparse

from tilde.cli import CommandError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="expansion checkpoint: a directory, a hub id (ielab/TILDE), or splade-tiny / "
                   "default (the bundled one)")
    p.add_argument("--collection", help="pid<TAB>text TSV, or JSONL (Pyserini, BEIR); .gz ok")
    p.add_argument("--output", required=True,
                   help="expansion JSONL to write (.gz ok); its settings go to <output>.meta.json")
    p.add_argument("--expander", choices=("auto", "tilde", "mlm"), default="auto",
                   help="strategy (auto: BertLMHeadModel checkpoints get tilde, BertForMaskedLM ones mlm)")
    p.add_argument("--top-k", type=int, default=200, help="candidates taken before removing passage and bad ids")
    p.add_argument("--max-length", type=int, default=128, help="passage tokens the expander reads, specials included")
    p.add_argument("--tokenizer", help="tokenizer dir/file/hub id (default: the model's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--chunk-batches", type=int, default=64, help="batches per resumable part")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                   help="model precision (auto: float16 on CUDA, float32 otherwise)")
    p.add_argument("--shard", default="0/1", help="expand shard i of n (a contiguous slice); join with --concat")
    p.add_argument("--text", action="store_true", help="write decoded text instead of token ids (for inspection)")
    p.add_argument("--concat", nargs="+", metavar="SHARD_FILE",
                   help="instead of expanding, concatenate finished shard outputs into --output")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output or unfinished job")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice, one per core); "
                   "on a busy machine 1 can beat 2")
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    if args.concat:
        if args.model or args.collection:
            raise CommandError("--concat takes shard files and --output only")
        from tilde.expand.shards import concat_shards

        stats = concat_shards(args.concat, args.output, overwrite=args.overwrite)
        print(f"concatenated {len(args.concat)} shards into {args.output}: {stats.passages} passages, "
              f"{stats.mean_terms:.1f} expansion terms added on average")
        return 0
    if not args.model or not args.collection:
        raise CommandError("--model and --collection are required (or --concat SHARD_FILE...)")

    import torch

    from tilde.expand.job import expand_collection
    from tilde.expand.loading import load_expander
    from tilde.index.build import parse_shard

    shard = parse_shard(args.shard)
    if args.threads is not None:
        if args.threads < 1:
            raise CommandError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from tilde.models import resolve_expander

    model = resolve_expander(args.model)
    if model is None:
        raise CommandError("--model none: nothing to expand with")
    expander = load_expander(
        model, args.expander, tokenizer=args.tokenizer, top_k=args.top_k, max_length=args.max_length,
        device=device, dtype=args.dtype,
    )
    summary = expand_collection(
        expander,
        args.collection,
        args.output,
        batch_size=args.batch_size,
        chunk_batches=args.chunk_batches,
        shard=shard,
        output_format="text" if args.text else "ids",
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(summary.format())
    return 0
