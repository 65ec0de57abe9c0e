"""Arguments and dispatch shared by ``tilde build`` and ``tilde index`` for impact indexes:
the embedded default recipe (splade-tiny impact weights + all-MiniLM-L6-v2 vectors), or any MLM
checkpoint given with ``--model``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_impact_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("impact indexes (the default, or an MLM --model such as splade-tiny)")
    g.add_argument("--dense", default="default",
                   help="bi-encoder for the dense part: 'default' (all-MiniLM-L6-v2 with the default recipe, none "
                        "for another MLM), a sentence-transformers folder or hub id, or 'none'")
    g.add_argument("--dense-codec", choices=("fp16", "sq8"), default=None,
                   help="dense vector storage (default: the recipe's, fp16)")
    g.add_argument("--impact-top-k", type=int, default=None,
                   help="expansion ids per passage, counted before filtering (default: the recipe's, 200)")
    g.add_argument("--impact-max-length", type=int, default=None,
                   help="passage tokens the MLM reads (default: the recipe's, 128)")
    g.add_argument("--scoring", default=None,
                   help="the scoring the index recommends (tokens, mlm, dense, fused:mlm=0.3,...); default: the "
                        "recipe's fused weights when there is a dense part, else mlm")
    g.add_argument("--no-query-encoders", action="store_true",
                   help="do not export the ONNX query encoders into the index (then only mode tokens works)")


def is_mlm_checkpoint(model: str) -> bool:
    """True for a masked-LM checkpoint (``BertForMaskedLM``: impact weights), False for TILDEv2."""
    config = Path(model) / "config.json"
    if not config.is_file() and not Path(model).exists():
        from tilde.hub import resolve_hub_id
        from tilde.text import looks_local

        if looks_local(model):
            raise FileNotFoundError(f"{model}: no such model directory")
        model = resolve_hub_id(model)  # fails at once when the hub is unreachable (or gives the cached copy)
        config = Path(model) / "config.json"
    if config.is_file():
        archs = json.loads(config.read_text("utf-8")).get("architectures") or []
    else:
        from transformers import AutoConfig

        archs = getattr(AutoConfig.from_pretrained(model), "architectures", None) or []
    return "BertForMaskedLM" in archs


def wants_impact(model: str | None) -> bool:
    if model is None or model == "default":
        return True
    from tilde.models import bundled_path

    return is_mlm_checkpoint(bundled_path(model))


def impact_settings(args: argparse.Namespace, announce: Callable[[str], None]) -> dict[str, Any]:
    """Keyword arguments of :func:`tilde.index.impact.build_impact_index` from the command line."""
    from tilde.models import DEFAULT_RECIPE, bundled_path
    from tilde.rank.scoring import Scoring, parse_scoring

    recipe = DEFAULT_RECIPE
    default = args.model is None or args.model == "default"
    model = bundled_path(recipe.impact_model if default else args.model)
    if args.dense == "default":
        dense = bundled_path(recipe.dense_model) if default and recipe.dense_model else None
    elif args.dense == "none":
        dense = None
    else:
        dense = bundled_path(args.dense)
    if args.scoring is not None:
        scoring = parse_scoring(args.scoring, Scoring.from_dict(recipe.scoring)).to_dict()
    elif dense is not None:
        scoring = recipe.scoring
    else:
        scoring = Scoring("mlm").to_dict()
    if default:
        announce(f"no model given: using the default recipe {recipe.name} (impact weights from splade-tiny "
                 f"{model}; dense vectors from {dense or 'none'}); scoring {Scoring.from_dict(scoring)}")
    else:
        announce(f"{model} is a masked LM: building an impact index (dense: {dense or 'none'}); "
                 f"scoring {Scoring.from_dict(scoring)}")
    return {
        "model": model,
        "top_k": args.impact_top_k or recipe.top_k,
        "max_length": args.impact_max_length or recipe.max_length,
        "dense_model": dense,
        "dense_codec": args.dense_codec or recipe.dense_codec,
        "query_encoders": not args.no_query_encoders,
        "dense_query_int8": recipe.dense_query_int8 if dense is not None else False,
        "scoring": scoring,
    }
