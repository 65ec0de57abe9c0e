"""The expander interface: passage token ids in, passage ids plus expansion ids out.

Every expander follows the same frame, taken from TILDE's reference ``expansion.py``: the passage
is encoded with special tokens, truncated to ``max_length`` and padded to exactly ``max_length``;
the model scores every vocabulary id; the ``top_k`` best ids are taken (``k`` counts candidates
*before* filtering, as the reference's ``--topk`` does); ids that occur in the model input
(padding included) and the reference "bad ids" are removed; the rest are kept best first. Only
how the model scores the vocabulary differs (:mod:`tilde.expand.tilde_v1`, :mod:`tilde.expand.mlm`).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from tilde import __version__
from tilde.text import TextProcessor, expansion_bad_ids

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_LENGTH", "DEFAULT_TOP_K", "Expander", "Expansion", "ExpansionSettings"]

# The reference expands passages encoded to at most 128 tokens and takes the top 200 ids.
DEFAULT_MAX_LENGTH = 128
DEFAULT_TOP_K = 200


@dataclass(frozen=True)
class ExpansionSettings:
    """What determines an expansion's output; recorded next to it and in the index manifest."""

    expander: str  # "tilde" | "mlm"
    model: str  # name or path it was loaded from
    model_sha256: str  # tilde.model.weights_hash of the float32 weights
    vocab_sha256: str
    top_k: int
    max_length: int
    dtype: str  # the dtype the model ran in ("float32", "float16", "bfloat16")

    def to_meta(self, output_format: str = "ids") -> dict[str, Any]:
        return {**asdict(self), "output_format": output_format, "tilde_version": __version__}


@dataclass(frozen=True)
class Expansion:
    """One expanded passage, in the reference's output layout."""

    passage: tuple[int, ...]  # the truncated passage ids and its [SEP], without [CLS] or padding
    terms: tuple[int, ...]  # expansion ids, best first
    truncated: bool  # the passage had more than max_length - 2 tokens; its tail is not in `passage`

    @property
    def ids(self) -> list[int]:
        """``passage`` followed by ``terms``: the ``psg`` field of the expansion JSONL."""
        return [*self.passage, *self.terms]


class Expander(ABC):
    """Scores the vocabulary for a batch of passages and keeps the best new ids.

    ``expand`` takes WordPiece ids *without* special tokens (one sequence per passage) and returns
    one :class:`Expansion` per passage, in order. The model is used in inference mode only.
    """

    kind: ClassVar[str]

    def __init__(
        self,
        model: torch.nn.Module,
        text: TextProcessor,
        *,
        model_name: str,
        model_sha256: str,
        top_k: int = DEFAULT_TOP_K,
        max_length: int = DEFAULT_MAX_LENGTH,
    ) -> None:
        config: Any = model.config
        vocab_size = int(config.vocab_size)
        if text.vocab_size != vocab_size:
            raise ValueError(
                f"{model_name}: the tokenizer has {text.vocab_size} ids but the model's head scores "
                f"{vocab_size}; pass the tokenizer the model was trained with (--tokenizer)"
            )
        if not 1 <= top_k <= vocab_size:
            raise ValueError(f"top_k must be between 1 and the vocabulary size ({vocab_size}), not {top_k}")
        max_positions = int(getattr(config, "max_position_embeddings", max_length))
        if not 2 <= max_length <= max_positions:
            raise ValueError(
                f"max_length must be between 2 and the model's {max_positions} positions, not {max_length}"
            )
        self.model = model
        self.text = text
        self.top_k = top_k
        self.max_length = max_length
        self.cls_id = text.special_id("[CLS]")
        self.sep_id = text.special_id("[SEP]")
        self.pad_id = text.special_id("[PAD]")
        param = next(model.parameters())
        self.device = param.device
        bad = torch.zeros(vocab_size, dtype=torch.bool)
        bad[torch.from_numpy(expansion_bad_ids(text.vocab).astype(np.int64))] = True
        self._bad = bad.to(self.device)
        self.settings = ExpansionSettings(
            expander=self.kind,
            model=model_name,
            model_sha256=model_sha256,
            vocab_sha256=text.vocab_hash,
            top_k=top_k,
            max_length=max_length,
            dtype=str(param.dtype).removeprefix("torch."),
        )

    @property
    @abstractmethod
    def first_id(self) -> int:
        """The id placed at position 0 of the model input ([CLS], or TILDE's passage marker)."""

    @abstractmethod
    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, float | None]:
        """Scores [batch, vocab] (higher is better) and an optional threshold: ids scoring at or
        below it are never added."""

    def input_ids(self, ids: Sequence[int]) -> list[int]:
        """``first_id, ids..., [SEP]`` truncated at the end of ``ids`` to ``max_length``."""
        return [self.first_id, *list(ids)[: self.max_length - 2], self.sep_id]

    @torch.inference_mode()
    def expand(self, passages: Sequence[Sequence[int]]) -> list[Expansion]:
        if not passages:
            return []
        rows = [self.input_ids(p) for p in passages]
        # Padded to exactly max_length, as the reference does: a row's input then never depends
        # on the rest of its batch, so shards and resumed runs reproduce an uninterrupted run.
        input_ids = torch.full((len(rows), self.max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), self.max_length), dtype=torch.long)
        for r, row in enumerate(rows):
            input_ids[r, : len(row)] = torch.as_tensor(row, dtype=torch.long)
            mask[r, : len(row)] = 1
        input_ids = input_ids.to(self.device, non_blocking=True)
        mask = mask.to(self.device, non_blocking=True)
        scores, threshold = self.score(input_ids, mask)
        values, top = torch.topk(scores, self.top_k, dim=1)
        # Excluded: every id of the (padded) model input -- so [PAD] too whenever the passage is
        # shorter than max_length, exactly as the reference's setdiff against the padded row --
        # and the bad ids.
        excluded = self._bad.unsqueeze(0).repeat(len(rows), 1)
        excluded.scatter_(1, input_ids, True)
        keep = ~excluded.gather(1, top)
        if threshold is not None:
            keep &= values > threshold
        top_np, keep_np = top.cpu().numpy(), keep.cpu().numpy()
        out: list[Expansion] = []
        for r, (p, row) in enumerate(zip(passages, rows)):
            # The reference drops every pad id from the stored passage, not only the padding.
            passage = tuple(t for t in row[1:] if t != self.pad_id)
            terms = tuple(int(t) for t in top_np[r][keep_np[r]])
            out.append(Expansion(passage=passage, terms=terms, truncated=len(p) > self.max_length - 2))
        return out
