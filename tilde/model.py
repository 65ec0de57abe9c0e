"""The TILDEv2 model: a BERT encoder plus ``tok_proj = Linear(hidden, 1)``; a passage token's
weight is ``ReLU(tok_proj(h_i))``.

Checkpoints use the reference layout (``bert.*``, ``tok_proj.weight`` [1, hidden],
``tok_proj.bias``) so official ones (``ielab/TILDEv2-TILDE200-exp``, ...) load from a hub id or a
local directory, and models saved here load in the reference code. Importing this module needs
torch and transformers (the ``[index]`` extra); the query path never imports it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertModel, PreTrainedModel

from tilde.text import looks_local

logger = logging.getLogger(__name__)

__all__ = ["MAX_PASSAGE_TOKENS", "ModelError", "TildeV2", "load_model", "passage_input_ids", "weights_hash"]

# The reference indexes [CLS] passage [SEP] expansion [SEP] truncated to 192 tokens.
MAX_PASSAGE_TOKENS = 192


class ModelError(ValueError):
    """A checkpoint could not be loaded or is not a TILDEv2 model."""


class TildeV2(PreTrainedModel):
    """BERT + token projection. Same parameter names and config class as the reference's
    ``modelingv2.TILDEv2``, so checkpoints are interchangeable."""

    config_class = BertConfig  # type: ignore[assignment]
    base_model_prefix = "tildev2"
    _supports_sdpa = True

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=True)
        self.tok_proj = torch.nn.Linear(config.hidden_size, 1)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        # BERT's own initialisation (normal(0, initializer_range), zero bias), as the reference.
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, torch.nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-position weights ``ReLU(tok_proj(h))``, shape [batch, length]."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=True
        ).last_hidden_state
        return torch.relu(self.tok_proj(hidden)).squeeze(-1)

    @classmethod
    def from_encoder(cls, name_or_path: str | os.PathLike[str]) -> TildeV2:
        """A fresh TILDEv2 model whose encoder is taken from a plain BERT checkpoint (for training);
        ``tok_proj`` is newly initialised."""
        encoder = BertModel.from_pretrained(str(name_or_path))
        model = cls(encoder.config)
        missing, unexpected = model.bert.load_state_dict(encoder.state_dict(), strict=False)
        if unexpected or [k for k in missing if not k.startswith("pooler.")]:
            raise ModelError(f"{name_or_path}: encoder weights do not fit BertModel ({missing=}, {unexpected=})")
        return model


def load_model(name_or_path: str | os.PathLike[str], device: str | torch.device = "cpu") -> TildeV2:
    """Load a TILDEv2 checkpoint (local directory or hub id), in eval mode, on ``device``.

    Refuses checkpoints without a trained ``tok_proj`` (a plain BERT would load with a random
    projection and produce meaningless weights silently)."""
    name = str(name_or_path)
    if not Path(name).exists():
        if looks_local(name):
            raise ModelError(f"{name}: no such model directory")
        from tilde.hub import resolve_hub_id

        name = resolve_hub_id(name, "TILDEv2 model")  # fails fast when the hub is unreachable
    try:
        model, info = TildeV2.from_pretrained(name, output_loading_info=True)
    except OSError as exc:
        raise ModelError(f"could not load TILDEv2 model {name!r}: {exc}") from exc
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("bert.pooler.")]
    if missing:
        raise ModelError(
            f"{name} is not a TILDEv2 checkpoint: missing {', '.join(sorted(missing)[:5])}"
            f"{' ...' if len(missing) > 5 else ''} (a plain BERT encoder needs `tilde train` first)"
        )
    model = model.eval().to(device)
    if torch.device(device).type == "cuda":
        model = model.half()
    return model


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over the state dict (sorted names, float32 bytes): identifies the weights whatever
    file format or dtype they were stored in."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith("bert.pooler.") or name.endswith("position_ids"):
            continue  # unused by the scorer; checkpoints differ in whether they carry them
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def passage_input_ids(ids: Sequence[int], cls_id: int, sep_id: int, max_len: int = MAX_PASSAGE_TOKENS) -> list[int]:
    """``[CLS] ids [SEP]`` truncated at the end of ``ids`` to ``max_len`` tokens, as the
    reference's ``encode_plus(psg, max_length=192, truncation='only_first')``."""
    return [cls_id, *list(ids)[: max_len - 2], sep_id]


@torch.inference_mode()
def encode(model: TildeV2, batch: Sequence[Sequence[int]], pad_id: int = 0) -> list[np.ndarray]:
    """Weights (float32, one array per sequence, same length as its input ids) for a batch of
    already-built input id lists. Pads to the longest sequence in the batch."""
    if not batch:
        return []
    device = next(model.parameters()).device
    length = max(len(x) for x in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    out = model(input_ids.to(device), mask.to(device)).float().cpu().numpy()
    return [out[row, : len(ids)] for row, ids in enumerate(batch)]
