"""Load an expansion checkpoint and pick the expander for it.

The strategy follows the checkpoint's declared architecture: ``BertLMHeadModel`` (TILDE's
``ielab/TILDE``) gets the TILDE expander, ``BertForMaskedLM`` (SPLADE-style MLMs such as
splade-tiny) the MLM one; ``kind`` overrides it (both classes hold the same ``bert`` + ``cls``
modules, so either expander can run on either).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from tilde.expand.base import DEFAULT_MAX_LENGTH, DEFAULT_TOP_K, Expander
from tilde.expand.mlm import MlmExpander
from tilde.expand.tilde_v1 import TildeExpander
from tilde.model import ModelError, weights_hash
from tilde.text import TextProcessor, TokenizerError, looks_local

logger = logging.getLogger(__name__)

__all__ = ["EXPANDER_KINDS", "detect_kind", "load_expander", "resolve_dtype"]

EXPANDER_KINDS = ("tilde", "mlm")
_ARCHITECTURES = {"BertLMHeadModel": "tilde", "BertForMaskedLM": "mlm"}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _drop_decoder_advice(record: logging.LogRecord) -> bool:
    return "add `is_decoder=True" not in record.getMessage()


def detect_kind(architectures: list[str] | None, where: str) -> str:
    """"tilde" or "mlm" from a config's ``architectures`` list."""
    for arch in architectures or ():
        if arch in _ARCHITECTURES:
            return _ARCHITECTURES[arch]
    raise ModelError(
        f"{where}: cannot tell the expander from the checkpoint's architectures {architectures or []}; "
        f"expected BertLMHeadModel (TILDE) or BertForMaskedLM (MLM) -- pass --expander tilde|mlm"
    )


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """"auto" is float16 on CUDA (the tensor cores' format) and float32 elsewhere."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be auto, {', '.join(_DTYPES)}; not {dtype!r}")
    return _DTYPES[dtype]


def load_expander(
    model: str | os.PathLike[str],
    kind: str = "auto",
    *,
    tokenizer: str | os.PathLike[str] | None = None,
    top_k: int = DEFAULT_TOP_K,
    max_length: int = DEFAULT_MAX_LENGTH,
    device: str | torch.device = "cpu",
    dtype: str = "auto",
) -> Expander:
    """Load ``model`` (local directory or hub id) in eval mode on ``device`` and wrap it in the
    expander for ``kind`` ("auto": from the checkpoint's architecture)."""
    from transformers import AutoConfig, BertForMaskedLM, BertLMHeadModel

    name = str(model)
    if not Path(name).exists():
        if looks_local(name):
            raise ModelError(f"{name}: no such model directory")
        from tilde.hub import resolve_hub_id

        name = resolve_hub_id(name, "expansion model")  # fails fast when the hub is unreachable
    if kind not in ("auto", *EXPANDER_KINDS):
        raise ValueError(f"expander must be auto, tilde or mlm, not {kind!r}")
    try:
        config = AutoConfig.from_pretrained(name)
    except OSError as exc:
        raise ModelError(f"could not load expansion model {name!r}: {exc}") from exc
    if config.model_type != "bert":
        raise ModelError(f"{name}: a {config.model_type!r} checkpoint; the expanders need a BERT-family LM head")
    declared = next((_ARCHITECTURES[a] for a in config.architectures or () if a in _ARCHITECTURES), None)
    if kind == "auto":
        kind = detect_kind(config.architectures, name)
    # Load the class the checkpoint declares (the reference loads ielab/TILDE as BertLMHeadModel).
    cls = BertLMHeadModel if (declared or kind) == "tilde" else BertForMaskedLM
    if getattr(config, "is_decoder", False):
        logger.warning(
            "%s is configured as a decoder (causal attention): position 0 then sees no passage token, "
            "so expansions will not depend on the passage", name
        )
    # TILDE's head is deliberately bidirectional (is_decoder=False); transformers' advice to set
    # is_decoder=True for a standalone BertLMHeadModel would be wrong here, so drop just that line.
    bert_logger = logging.getLogger("transformers.models.bert.modeling_bert")
    bert_logger.addFilter(_drop_decoder_advice)
    try:
        net, info = cls.from_pretrained(name, output_loading_info=True)
    finally:
        bert_logger.removeFilter(_drop_decoder_advice)
    missing = [k for k in info.get("missing_keys", []) if k.startswith(("bert.encoder", "bert.embeddings", "cls."))]
    if missing:
        raise ModelError(
            f"{name}: checkpoint lacks {', '.join(sorted(missing)[:5])}{' ...' if len(missing) > 5 else ''}; "
            f"an expander needs a trained LM head"
        )
    sha = weights_hash(net)  # before any dtype change, so the hash names the stored weights
    dev = torch.device(device)
    net = net.eval().to(device=dev, dtype=resolve_dtype(dtype, dev))
    try:
        text = TextProcessor.load(tokenizer if tokenizer is not None else name)
    except TokenizerError as exc:
        raise TokenizerError(f"{exc} (pass --tokenizer, e.g. bert-base-uncased for ielab/TILDE)") from exc
    expander_cls: type[Expander] = TildeExpander if kind == "tilde" else MlmExpander
    return expander_cls(net, text, model_name=name, model_sha256=sha, top_k=top_k, max_length=max_length)
