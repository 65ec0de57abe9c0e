"""Build (expand +) index the passages an evaluation needs, once per model, expander and data.

A cache entry is a directory ``<cache>/<key>/`` holding ``passages.tsv`` (only the needed
passages, in the data file's order), ``expanded.jsonl`` when an expander is used, ``index/`` (a
``tilde index``) and ``key.json`` (what the key was computed from). The key is the sha256 of:
the model's weights hash (:func:`tilde.model.weights_hash`, so a re-saved checkpoint still hits),
the expander's settings (``tilde.expand``: its weights hash, top-k, max length, dtype), the
sha256 of the passages file and the sorted set of needed passage ids. An entry is complete when
its index manifest exists (the index builder writes it last); an interrupted expansion or
index build resumes from its finished chunks.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tilde.io import atomic_path, atomic_write_text, open_text, read_collection

logger = logging.getLogger(__name__)

__all__ = ["CachedIndex", "ExpansionUnavailable", "default_cache_dir", "is_impact", "prepare_impact_index",
           "prepare_index", "resolve_model"]


class ExpansionUnavailable(RuntimeError):
    """``--expander`` was given but the expansion module (``tilde.expand``) cannot run it."""


class NoModelError(ValueError):
    """No ``--model`` and no default model."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tilde" / "eval"


def resolve_model(model: str | None) -> str:
    """``model``, else the package's embedded default TILDEv2 model
    (``tilde.models.default_model_path()``) when it is there, else an error naming the flag."""
    if model and model != "default":
        from tilde.models import bundled_path

        return bundled_path(model)
    why = "tilde.models is not available"
    try:
        from tilde.models import default_model_path

        return str(default_model_path())
    except ImportError:
        pass
    except FileNotFoundError as exc:
        why = str(exc)
    raise NoModelError(
        f"no default TILDEv2 model is available yet ({why}): pass --model with a TILDEv2 checkpoint "
        "(a local directory or a Hugging Face id such as ielab/TILDEv2-TILDE200-exp)"
    )


@dataclass(frozen=True)
class CachedIndex:
    path: Path  # the tilde index directory
    entry: Path  # the cache entry holding it
    key: str
    built: bool  # False when it came from the cache
    passages: int
    absent: int  # needed passage ids not found in the passages file
    seconds: float
    joules: float


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _expansion_module() -> Any:
    """``tilde.expand``, imported lazily: evaluation without ``--expander`` never needs it."""
    try:
        module = importlib.import_module("tilde.expand")
    except ImportError as exc:
        raise ExpansionUnavailable(
            f"--expander needs the expansion module tilde.expand, which cannot be imported ({exc}); "
            "run without --expander to index the raw passages"
        ) from exc
    missing = [name for name in ("load_expander", "expand_collection") if not hasattr(module, name)]
    if missing:
        raise ExpansionUnavailable(
            f"--expander needs tilde.expand.{' and '.join(missing)}, which this version of tilde.expand "
            "does not provide; run without --expander to index the raw passages"
        )
    return module


def _expansion_key(expander: Any) -> dict[str, Any]:
    # The expander's own record of what determines its output (weights hash, top-k, ...),
    # without the tilde version: a new release that expands the same way keeps the cache.
    meta = dict(expander.settings.to_meta())
    meta.pop("tilde_version", None)
    return meta


def _write_subset(passages: Path, needed: set[str], output: Path) -> tuple[int, int]:
    """Copy the needed passages (file order) to ``output``; returns (written, needed but absent)."""
    found: set[str] = set()
    with atomic_path(output) as tmp, open_text(tmp, "wt") as f:
        for p in read_collection(passages):
            if p.pid in needed and p.pid not in found:
                if p.text is None:
                    raise ValueError(f"{passages}: expected passage text, got token ids")
                # The TSV writer's only constraints: no tab or line break inside the text.
                f.write(f"{p.pid}\t{' '.join(p.text.split())}\n")
                found.add(p.pid)
    return len(found), len(needed - found)


def is_impact(model: str | None) -> bool:
    """True when ``model`` means an impact index: the default recipe (None or "default"), or a
    masked-LM checkpoint such as splade-tiny."""
    from tilde.commands._impact import wants_impact

    return wants_impact(model)


def prepare_impact_index(
    model: str | None,
    passages: str | os.PathLike[str],
    needed: Iterable[str],
    *,
    dense: str | None = "default",
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    progress: bool = False,
    top_k: int | None = None,
) -> CachedIndex:
    """The impact index (:func:`tilde.index.impact.build_impact_index`) of the ``needed``
    passages: the default recipe when ``model`` is None/"default" (its dense model unless
    ``dense`` is None), else the MLM ``model`` (with ``dense`` when it names a bi-encoder)."""
    from tilde.index.format import MANIFEST
    from tilde.index.impact import build_impact_index, refresh_query_encoders
    from tilde.models import DEFAULT_RECIPE, bundled_path

    recipe = DEFAULT_RECIPE
    default = model is None or model == "default"
    dense_model: str | None
    try:
        mlm = bundled_path(recipe.impact_model if default else str(model))
        if dense == "default":
            dense_model = bundled_path(recipe.dense_model) if default and recipe.dense_model else None
        else:
            dense_model = bundled_path(dense) if dense else None
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"the default recipe {recipe.name} cannot run here ({exc}); install it with "
                                f"scripts/install.sh, or pass --model with a checkpoint") from None
    settings: dict[str, Any] = {
        "top_k": top_k or recipe.top_k,
        "max_length": recipe.max_length,
        "dense_model": dense_model,
        "dense_codec": recipe.dense_codec,
        "scoring": recipe.scoring if dense_model else {"mode": "mlm"},
    }
    passages = Path(passages)
    if not passages.is_file():
        raise FileNotFoundError(f"{passages}: no such passages file")
    wanted = set(needed)
    started = time.perf_counter()
    key_fields: dict[str, Any] = {
        "weighting": "impact",
        "model_sha256": _dir_weights_sha(mlm),
        "dense_sha256": _dir_weights_sha(dense_model) if dense_model else None,
        # The query side (encoders, recommended scoring) is not part of the key: a cached index gets
        # the recipe's current one (refresh_query_encoders), its passage side is reused.
        **{k: v for k, v in settings.items() if k not in ("dense_model", "scoring")},
        "passages_sha256": _file_sha256(passages),
        "pids_sha256": hashlib.sha256("\n".join(sorted(wanted)).encode("utf-8")).hexdigest(),
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:20]
    entry = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / key
    index_dir = entry / "index"
    info_path = entry / "key.json"
    int8 = bool(recipe.dense_query_int8 and dense_model)
    if (index_dir / MANIFEST).is_file():
        # Query encoders are not part of the key: a cached index gets the recipe's current ones.
        refresh_query_encoders(index_dir, mlm, dense_model, dense_int8=int8, scoring=settings["scoring"])
        info = json.loads(info_path.read_text("utf-8")) if info_path.is_file() else {}
        return CachedIndex(index_dir, entry, key, False, int(info.get("passages", 0)), int(info.get("absent", 0)),
                           time.perf_counter() - started, 0.0)
    entry.mkdir(parents=True, exist_ok=True)
    subset = entry / "passages.tsv"
    if subset.is_file():
        written = sum(1 for _ in read_collection(subset))
        absent = len(wanted) - written
    else:
        written, absent = _write_subset(passages, wanted, subset)
    summary = build_impact_index(mlm, subset, index_dir, **settings, dense_query_int8=int8, batch_size=batch_size,
                                 progress=progress)
    atomic_write_text(info_path, json.dumps({**key_fields, "model": mlm, "dense": dense_model, "passages": written,
                                             "absent": absent, "source": str(passages.resolve())},
                                            indent=2, sort_keys=True) + "\n")
    return CachedIndex(index_dir, entry, key, True, written, absent, time.perf_counter() - started, summary.joules)


def _dir_weights_sha(model: str) -> str:
    """sha256 of a local model folder's weight files (a hub id hashes its name)."""
    path = Path(model)
    if not path.is_dir():
        return hashlib.sha256(model.encode("utf-8")).hexdigest()
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        h.update(_file_sha256(f).encode())
    return h.hexdigest()


def prepare_index(
    model: str,
    passages: str | os.PathLike[str],
    needed: Iterable[str],
    *,
    expander: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> CachedIndex:
    """The index of the ``needed`` passages of ``passages`` under ``model`` (built or cached)."""
    from tilde.index.build import build_index, model_feedback
    from tilde.index.format import MANIFEST, IndexFormatError
    from tilde.model import load_model, weights_hash
    from tilde.models import bundled_path

    model = bundled_path(model)
    passages = Path(passages)
    if not passages.is_file():
        raise FileNotFoundError(f"{passages}: no such passages file")
    wanted = set(needed)
    started = time.perf_counter()
    net = load_model(model)
    model_sha = weights_hash(net)
    if expander is not None:
        from tilde.models import resolve_expander

        expander = resolve_expander(expander)
    module = _expansion_module() if expander is not None else None
    expander_obj = module.load_expander(expander) if module is not None else None
    pid_hash = hashlib.sha256("\n".join(sorted(wanted)).encode("utf-8")).hexdigest()
    key_fields: dict[str, Any] = {
        "model_sha256": model_sha,
        # The index records the model's recommended feedback: a change must not reuse an old index.
        **({"feedback": fb} if (fb := model_feedback(net.config, where=str(model))) else {}),
        "expander": None if expander_obj is None else _expansion_key(expander_obj),
        "passages_sha256": _file_sha256(passages),
        "pids_sha256": pid_hash,
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:20]
    entry = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = entry / key
    index_dir = entry / "index"
    info_path = entry / "key.json"
    if (index_dir / MANIFEST).is_file():
        info = json.loads(info_path.read_text("utf-8")) if info_path.is_file() else {}
        logger.info("using cached index %s", index_dir)
        return CachedIndex(index_dir, entry, key, False, int(info.get("passages", 0)), int(info.get("absent", 0)),
                           time.perf_counter() - started, 0.0)

    entry.mkdir(parents=True, exist_ok=True)
    subset = entry / "passages.tsv"
    if subset.is_file():  # same key, same content; keeping its mtime lets a build resume
        written = sum(1 for _ in read_collection(subset))
        absent = len(wanted) - written
    else:
        written, absent = _write_subset(passages, wanted, subset)
    if absent:
        logger.warning("%d needed passages are not in %s", absent, passages)
    collection = subset
    if module is not None:
        collection = entry / "expanded.jsonl"
        if not collection.is_file():  # the job writes it atomically, and resumes when interrupted
            module.expand_collection(expander_obj, subset, collection, batch_size=batch_size, progress=progress)
    try:  # no overwrite first: an interrupted build resumes from its finished chunks
        summary = build_index(model, collection, index_dir, batch_size=batch_size, progress=progress)
    except IndexFormatError as exc:
        logger.warning("starting the cached index over: %s", exc)
        summary = build_index(model, collection, index_dir, batch_size=batch_size, progress=progress, overwrite=True)
    atomic_write_text(info_path, json.dumps({**key_fields, "model": model, "passages": written, "absent": absent,
                                             "source": str(passages.resolve())}, indent=2, sort_keys=True) + "\n")
    return CachedIndex(index_dir, entry, key, True, written, absent, time.perf_counter() - started, summary.joules)
