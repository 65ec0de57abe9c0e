"""TILDE (v1) expansion (Zhuang & Zuccon 2021, reference ``ielab/TILDE`` ``expansion.py``).

A ``BertLMHeadModel`` trained for query likelihood reads the passage with position 0 replaced by
``[unused0]`` (id 1, TILDE's "this is a passage" marker); the LM-head logits at that position
score the vocabulary. Everything else (truncation at 128, top-k, exclusions, order) is the
shared frame of :class:`tilde.expand.base.Expander`.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import torch

from tilde.expand.base import Expander

logger = logging.getLogger(__name__)

__all__ = ["TildeExpander"]

# The reference hard-codes id 1; in BERT vocabularies that is [unused0].
PASSAGE_MARKER = "[unused0]"


class TildeExpander(Expander):
    kind = "tilde"

    @property
    def first_id(self) -> int:
        return self.text.special_id(PASSAGE_MARKER)

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, float | None]:
        model = cast(Any, self.model)
        hidden = model.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
            return_dict=True,
        ).last_hidden_state
        # Only position 0 is read, so only it goes through the 30k-wide head (the reference
        # computes all 128 positions and discards 127 of them).
        logits = model.cls(hidden[:, 0])
        return logits.float(), None
