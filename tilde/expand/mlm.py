"""MLM (SPLADE-style) expansion for masked-LM checkpoints without TILDE's trained head.

The candidate weight of vocabulary id ``v`` is ``max over the passage's positions of
log(1 + ReLU(logit[pos, v]))`` (SPLADE's max pooling), the input being ``[CLS] passage [SEP]``.
Ids whose weight is 0 are never added (they would be an arbitrary choice among ties at 0).

Because ``log1p(relu(x))`` is non-decreasing, ranking by the maximum raw logit ranks by weight,
and ``weight > 0`` is ``max logit > 0``: so the head only needs a running max over positions,
never the [positions, vocab] activations. The 30,522-wide head over every position is the cost
that dominates; on CPU it is computed only for real (non-pad) positions and in vocabulary tiles
small enough that each [positions, tile] block of logits stays in cache while it is max-reduced.
On CUDA, where per-passage loops would starve the GPU, whole row chunks are computed densely
with padding masked out.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import torch

from tilde.expand.base import DEFAULT_MAX_LENGTH, DEFAULT_TOP_K, Expander
from tilde.text import TextProcessor

logger = logging.getLogger(__name__)

__all__ = ["MlmExpander", "max_logits_dense", "max_logits_packed"]

# Vocabulary columns per tile on CPU: 128 positions x 2048 x 4 bytes = 1 MiB, about one L2.
_VOCAB_TILE = 2048
# Elements of one dense [rows, positions, vocab] logits block on an accelerator (~1 GiB fp32).
_DENSE_ELEMENTS = 1 << 28


def max_logits_packed(
    packed: torch.Tensor, lengths: list[int], weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Per passage, the max over its positions of ``packed @ weight.T + bias``.

    ``packed`` [sum(lengths), dim] holds the real positions of every passage back to back
    (already through the head's transform), ``weight`` is [vocab, dim]. The bias is added after
    the max: it is constant per id and float addition is monotone, so ``max(x) + b == max(x + b)``
    exactly.
    """
    vocab = weight.shape[0]
    out = torch.empty((len(lengths), vocab), dtype=packed.dtype, device=packed.device)
    tiles = [weight[v : v + _VOCAB_TILE].t().contiguous() for v in range(0, vocab, _VOCAB_TILE)]
    offset = 0
    for r, n in enumerate(lengths):
        h = packed[offset : offset + n]
        offset += n
        start = 0
        for tile in tiles:
            width = tile.shape[1]
            torch.amax(torch.mm(h, tile), dim=0, out=out[r, start : start + width])
            start += width
    return out if bias is None else out + bias


def max_logits_dense(
    hidden: torch.Tensor, attention_mask: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Same result as :func:`max_logits_packed` from whole [rows, positions, vocab] blocks,
    padding set to -inf before the max (the layout an accelerator wants)."""
    rows, positions, _ = hidden.shape
    vocab = weight.shape[0]
    step = max(1, _DENSE_ELEMENTS // (positions * vocab))
    out = torch.empty((rows, vocab), dtype=hidden.dtype, device=hidden.device)
    pad = ~attention_mask.bool()
    for r in range(0, rows, step):
        logits = torch.matmul(hidden[r : r + step], weight.t())
        logits.masked_fill_(pad[r : r + step].unsqueeze(-1), float("-inf"))
        torch.amax(logits, dim=1, out=out[r : r + step])
    return out if bias is None else out + bias


class MlmExpander(Expander):
    kind = "mlm"

    def __init__(
        self,
        model: torch.nn.Module,
        text: TextProcessor,
        *,
        model_name: str,
        model_sha256: str,
        top_k: int = DEFAULT_TOP_K,
        max_length: int = DEFAULT_MAX_LENGTH,
        head_strategy: str = "auto",
    ) -> None:
        super().__init__(
            model, text, model_name=model_name, model_sha256=model_sha256, top_k=top_k, max_length=max_length
        )
        if head_strategy not in ("auto", "packed", "dense"):
            raise ValueError(f"head_strategy must be auto, packed or dense, not {head_strategy!r}")
        if head_strategy == "auto":
            head_strategy = "packed" if self.device.type == "cpu" else "dense"
        self.head_strategy = head_strategy
        head = cast(Any, self.model).cls.predictions
        self._transform: torch.nn.Module = head.transform
        self._weight: torch.Tensor = head.decoder.weight
        self._bias: torch.Tensor | None = head.decoder.bias if head.decoder.bias is not None else head.bias

    @property
    def first_id(self) -> int:
        return self.cls_id

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, float | None]:
        hidden = cast(Any, self.model).bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
            return_dict=True,
        ).last_hidden_state
        if self.head_strategy == "packed":
            # Rows are left-aligned, so boolean indexing packs each passage's positions in order.
            # The transform (dense + GELU + LayerNorm) is per position: real positions only.
            packed = self._transform(hidden[attention_mask.bool()])
            lengths = attention_mask.sum(dim=1).tolist()
            best = max_logits_packed(packed, lengths, self._weight, self._bias)
        else:
            best = max_logits_dense(self._transform(hidden), attention_mask, self._weight, self._bias)
        # log1p(relu(x)) > 0  <=>  x > 0: threshold on the raw logits.
        return best.float(), 0.0
