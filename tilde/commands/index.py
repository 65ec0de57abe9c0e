"""tilde index --model M --collection FILE --output DIR"""

from __future__ import annotations

import argparse
import sys

from tilde.commands._engine import add_engine_arguments, engine_from_args
from tilde.commands._impact import add_impact_arguments, impact_settings, wants_impact


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="TILDEv2 checkpoint (local directory or Hugging Face hub id), or a masked LM such as "
                        "splade-tiny for an impact index; default: the default recipe (splade-tiny impact "
                        "weights + all-MiniLM-L6-v2 vectors, fused scoring)")
    p.add_argument("--collection", required=True,
                   help="pid<TAB>text TSV, or JSONL (expansion output, Pyserini, BEIR); .gz ok")
    p.add_argument("--output", required=True, help="index directory to write")
    p.add_argument("--tokenizer", help="tokenizer dir/file/hub id (default: the model's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--chunk-batches", type=int, default=64, help="batches per resumable chunk")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--weights", choices=("float16", "uint8"), default="float16", help="stored weight precision")
    p.add_argument("--shard", default="0/1",
                   help="build shard i of n (contiguous slice); merge with `tilde index merge`")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index or unfinished build")
    p.add_argument("--no-progress", action="store_true")
    add_impact_arguments(p)
    add_engine_arguments(p)


def main(args: argparse.Namespace) -> int:
    import torch

    from tilde.index.build import build_index, parse_shard
    from tilde.models import resolve_model

    engine = engine_from_args(args)
    device = args.device or ("cuda" if torch.cuda.is_available() or args.ray_gpus_per_actor else "cpu")
    if wants_impact(args.model):
        from tilde.index.impact import build_impact_index

        settings = impact_settings(args, _stderr)
        summary = build_impact_index(
            settings.pop("model"), args.collection, args.output, **settings, tokenizer=args.tokenizer,
            batch_size=args.batch_size, chunk_batches=args.chunk_batches, shard=parse_shard(args.shard),
            device=device, weight_dtype=args.weights, overwrite=args.overwrite, progress=not args.no_progress,
            engine=engine,
        )
        print(summary.format())
        return 0
    summary = build_index(
        resolve_model(args.model, announce=_stderr),
        args.collection,
        args.output,
        tokenizer=args.tokenizer,
        batch_size=args.batch_size,
        chunk_batches=args.chunk_batches,
        shard=parse_shard(args.shard),
        device=device,
        weight_dtype=args.weights,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        engine=engine,
    )
    print(summary.format())
    return 0


def _stderr(message: str) -> None:
    print(f"tilde index: {message}", file=sys.stderr)
