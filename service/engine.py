"""Ranking one request's candidates, stage by stage, over the pieces of ``tilde.rank``.

The fast path (``ids``) is the ``Reranker``'s own sequence (tokenize, lookup, score, sort) with a
metered lap per stage; documents add on-the-fly encoding for texts that are not in the index.
Semantics are the Reranker's: ties keep input order, unknown ids follow the missing policy
("error" → 422, "skip" → left out, "zero" → appended with score 0) and are always reported.

A text longer than one passage is cut into chunks (:mod:`service.chunking`); every chunk is
scored as a passage beside the other candidates, and the document gets its best chunk's score
(Cohere's rerank does the same). In a fused mode the normalisation spans every passage scored,
chunks included, so a chunked document's score is its best chunk's score among them. Texts are
budgeted in model input tokens (``max_encode_tokens``, shared by a batch's queries), counted
after chunking and truncation, before anything is encoded, each passage charged
:data:`PASSAGE_COST_TOKENS` more for the model pass's fixed cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tilde.index.format import IndexFormatError
from tilde.metering import Recorder
from tilde.rank import Reranker, UnknownDocidError
from tilde.rank.texts import EncodedTexts

from .chunking import Chunked
from .encoder import TextEncoder
from .errors import ApiError
from .limits import Deadline
from .schemas import DocId, Ranked, RerankRequest

__all__ = ["DEFAULT_MAX_CHUNKS_PER_DOC", "DEFAULT_MAX_ENCODE_TOKENS", "PASSAGE_COST_TOKENS", "EncodeBudget", "Engine",
           "StageClock", "encode_cost"]

# Defaults of ServiceConfig.max_encode_tokens / max_chunks_per_doc (see there for the measurement).
DEFAULT_MAX_ENCODE_TOKENS = 18_432
DEFAULT_MAX_CHUNKS_PER_DOC = 10
# What the budget charges a passage besides its tokens: the MLM input is padded (to 128 for a
# passage of up to 128 tokens, as the build pads it, so weights match bit for bit), which makes a
# short passage cost about as much as 16 more tokens (default recipe, 1 core: 8.3 ms for 16
# tokens, 37 ms for 128; benchmarks/encode_texts.py). Charged this way, any mix of lengths the
# budget admits takes about the same time.
PASSAGE_COST_TOKENS = 16


class StageClock:
    """Laps of one request: each stage's wall time and meter energy, recorded through the
    service's :class:`Recorder` (aggregates, hooks, Prometheus) and kept for ``meta`` and
    ``Server-Timing``. A stage lapped several times (a batch) accumulates."""

    __slots__ = ("_e", "_e0", "_read", "_rec", "_t", "_t0", "deadline", "joules", "timing")

    def __init__(self, recorder: Recorder, deadline: Deadline | None = None) -> None:
        self.deadline = deadline  # checked after every lap: past it, a JSON 503
        self._rec = recorder
        self._read = recorder.meter.read
        self._e0 = self._e = self._read()
        self._t0 = self._t = time.perf_counter()
        self.timing: dict[str, float] = {}
        self.joules = 0.0

    def lap(self, stage: str, items: int = 1) -> None:
        t = time.perf_counter()
        e = self._read()
        seconds = t - self._t
        self._rec.record(stage, seconds, max(0.0, e - self._e), items)
        self.timing[stage] = self.timing.get(stage, 0.0) + seconds * 1e3
        # The next stage starts after this bookkeeping: stages time their own work, and the
        # metering overhead shows as the difference between "total" and the sum of the stages.
        self._e = self._read()
        self._t = time.perf_counter()
        if self.deadline is not None:
            self.deadline.check(stage)

    def finish(self, items: int) -> None:
        """Record the whole handler span as stage "request"; sets ``timing["total"]`` and ``joules``."""
        t = time.perf_counter()
        e = self._read()
        self.joules = max(0.0, e - self._e0)
        self._rec.record("request", t - self._t0, self.joules, items)
        self.timing["total"] = (t - self._t0) * 1e3

    def server_timing(self) -> str:
        return ", ".join(f"{k};dur={v:.3f}" for k, v in self.timing.items())


@dataclass
class EncodeBudget:
    """Texts, and model input tokens, a request may still have encoded on the fly (shared by a
    batch's queries). ``tokens`` < 0: the engine's ``max_encode_tokens``, set at first use."""

    limit: int
    left: int = -1
    tokens: int = -1
    tokens_left: int = -1

    def __post_init__(self) -> None:
        if self.left < 0:
            self.left = self.limit
        if self.tokens >= 0 and self.tokens_left < 0:
            self.tokens_left = self.tokens


@dataclass(frozen=True)
class _Encoded:
    """A query's texts encoded on the fly: one passage per chunk, chunks doc by doc."""

    texts: EncodedTexts
    docs: list[int]  # candidate positions of the encoded documents
    chunks: list[Chunked]  # per document
    cached: list[bool]  # per chunk
    report: list[dict[str, Any]]  # the "encoded" entries, per document

    def positions(self, n: int) -> np.ndarray:
        """Where each chunk is scored: a document's first chunk at its own position, its other
        chunks after the ``n`` candidates."""
        out: list[int] = []
        extra = n
        for pos, c in zip(self.docs, self.chunks):
            out.append(pos)
            out.extend(range(extra, extra + len(c.texts) - 1))
            extra += len(c.texts) - 1
        return np.asarray(out, dtype=np.int64)


def encode_cost(chunks: Chunked) -> int:
    """What a text's passages cost against ``max_encode_tokens``: their model input tokens plus
    :data:`PASSAGE_COST_TOKENS` each."""
    return chunks.tokens + PASSAGE_COST_TOKENS * len(chunks.texts)


def _per_doc(value: int | None, name: str, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(422, f"{where}{name} must be an integer >= 1, not {value!r}", "invalid")
    return value


def _unknown_message(ids: list[str], hint: str) -> str:
    return f"{UnknownDocidError(ids)}{hint}"


class Engine:
    def __init__(
        self, reranker: Reranker, encoder: TextEncoder | None, max_encode_tokens: int = DEFAULT_MAX_ENCODE_TOKENS,
        max_chunks_per_doc: int = DEFAULT_MAX_CHUNKS_PER_DOC,
    ) -> None:
        self.reranker = reranker
        self.encoder = encoder
        self.max_encode_tokens = max_encode_tokens
        self.max_chunks_per_doc = max_chunks_per_doc

    def query_ids(self, query: str, where: str = "") -> np.ndarray:
        """The query's token ids; a query the tokenizer refuses is the client's error (422)."""
        try:
            return self.reranker.text.query_ids(query)
        except (TypeError, ValueError) as exc:
            raise ApiError(422, f"{where}{exc}", "invalid") from None

    def query_encodes(self, mode: str | None) -> int:
        """Query-encoder passes one query costs in ``mode`` (0 for token scoring; a malformed
        mode is 0 here and refused when ranked)."""
        try:
            signals = self.reranker._scoring(mode).signals
        except ValueError:
            return 0
        return sum(kind in signals for kind in ("mlm", "dense"))

    def rank(
        self, req: RerankRequest, policy: str, clock: StageClock, budget: EncodeBudget, where: str = "",
        mode: str | None = None, first_stage: np.ndarray | None = None, q: np.ndarray | None = None,
        max_tokens_per_doc: int | None = None, max_chunks_per_doc: int | None = None,
    ) -> Ranked:
        """Rank one query's candidates; ``q``: its token ids when the caller already tokenized it
        (the budget check), else it is tokenized (and checked) here. ``max_tokens_per_doc`` /
        ``max_chunks_per_doc``: how texts encoded on the fly are cut into chunks (Cohere's
        request fields; None: the service's defaults)."""
        index = self.reranker.index
        if q is None:
            q = self.query_ids(req.query, where)
            clock.lap("tokenize")
        n = len(req)
        docs = req.documents
        ids: list[DocId | None]
        if req.ids is not None:
            ids = req.ids  # type: ignore[assignment]
            rows = index.lookup(req.ids)
        else:
            assert docs is not None
            ids = [d.id for d in docs]
            keyed = [i for i, d in enumerate(ids) if d is not None]
            rows = np.full(n, -1, dtype=np.int64)
            if keyed:
                rows[keyed] = index.lookup([ids[i] for i in keyed])  # type: ignore[misc]
        clock.lap("lookup", n)
        unknown = rows < 0
        max_tokens = _per_doc(max_tokens_per_doc, "max_tokens_per_doc", where)
        max_chunks = _per_doc(max_chunks_per_doc, "max_chunks_per_doc", where) or self.max_chunks_per_doc
        enc = self._encode(req, ids, unknown, clock, budget, where, max_tokens, max_chunks)
        texts, text_pos, encoded = None, np.zeros(0, np.int64), []
        score_rows, fs = rows, first_stage
        if enc is not None:
            unknown[enc.docs] = False
            texts, text_pos, encoded = enc.texts, enc.positions(n), enc.report
            extra = len(text_pos) - len(enc.docs)
            if extra:  # chunks beyond each document's first: scored as extra candidates, not in the index
                owner = np.repeat(np.asarray(enc.docs, dtype=np.int64), [len(c.texts) for c in enc.chunks])
                owner = owner[text_pos >= n]
                score_rows = np.concatenate([rows, np.full(extra, -1, dtype=np.int64)])
                if first_stage is not None:
                    fs = np.concatenate([np.asarray(first_stage, dtype=np.float64), np.asarray(first_stage)[owner]])
        try:
            scored = self.reranker.score(req.query, score_rows, mode=mode, first_stage=fs, texts=texts,
                                         text_positions=text_pos, query_ids=q)
        except IndexFormatError as exc:  # a mode this index cannot serve (no dense part, no query encoder)
            raise ApiError(422, f"{where}{exc}", "unsupported_mode") from None
        except ValueError as exc:  # a malformed mode
            raise ApiError(422, f"{where}{exc}", "invalid") from None
        scores = scored.scores
        if enc is not None and len(text_pos) > len(enc.docs):
            scores = _best_chunks(scores, n, enc, text_pos)
        clock.lap("score", n)
        if "encode" in scored.timing_ms:  # the query encoders' share of "score"
            clock.timing["query_encode"] = scored.timing_ms["encode"]
        missing: list[dict[str, Any]] = []
        if unknown.any():
            missing = self._missing(req, ids, unknown, policy, where)
        if missing:
            known_pos = np.flatnonzero(~unknown)
            order = known_pos[np.argsort(-scores[known_pos], kind="stable")]
            if policy == "zero":
                order = np.concatenate([order, np.flatnonzero(unknown)])
        else:
            order = np.argsort(-scores, kind="stable")
        if req.top_n is not None:
            order = order[: req.top_n]
        ranked = Ranked(order, scores[order], missing, encoded, scored.query_tokens, scored.feedback_terms,
                        str(self.reranker.scoring if mode is None else self.reranker._scoring(mode)),
                        scored.signals)
        clock.lap("sort", n)
        return ranked

    def _encode(
        self, req: RerankRequest, ids: list[DocId | None], unknown: np.ndarray, clock: StageClock,
        budget: EncodeBudget, where: str, max_tokens: int | None, max_chunks: int,
    ) -> _Encoded | None:
        """Chunk and encode the documents that carry text and are not in the index (within the
        budget, checked on the chunks' tokens before any model runs)."""
        docs = req.documents
        if docs is None or self.encoder is None or not unknown.any():
            return None
        with_text = [i for i in np.flatnonzero(unknown).tolist() if docs[i].text is not None]
        if not with_text:
            return None
        if len(with_text) > budget.left:
            raise ApiError(
                422,
                f"{where}{len(with_text)} documents are not in the index and would need encoding; a request may "
                f"have at most {budget.limit} encoded ({budget.left} left; max_encode in /info). "
                f"Send index ids, or fewer texts.",
                "too_many_texts",
            )
        if budget.tokens < 0:
            budget.tokens = budget.tokens_left = self.max_encode_tokens
        encoder = self.encoder
        chunks = [encoder.chunk(docs[i].text or "", max_tokens, max_chunks) for i in with_text]
        tokens = sum(encode_cost(c) for c in chunks)
        clock.lap("chunk", len(with_text))
        if tokens > budget.tokens_left:
            passages = sum(len(c.texts) for c in chunks)
            raise ApiError(
                422,
                f"{where}{len(with_text)} texts not in the index would cost {tokens} tokens to encode: "
                f"{passages} passages of at most {encoder.window} word pieces (at most {max_chunks} per text), "
                f"each charged its tokens + {PASSAGE_COST_TOKENS}; a request may have at most {budget.tokens} "
                f"({budget.tokens_left} left; max_encode_tokens in /info). Send index ids, fewer or shorter "
                f"texts, or a lower max_tokens_per_doc or max_chunks_per_doc.",
                "too_many_texts",
            )
        budget.left -= len(with_text)
        budget.tokens_left -= tokens
        flat = [t for c in chunks for t in c.texts]
        texts, cached = encoder.encode_cached(flat)
        clock.lap("encode", len(flat))
        report: list[dict[str, Any]] = []
        at = 0
        for i, c in zip(with_text, chunks):
            k = len(c.texts)
            report.append({"index": i, "id": ids[i], "chunks": k, "truncated": c.truncated, "best_chunk": 0,
                           "tokens": c.tokens, "cached": all(cached[at : at + k])})
            at += k
        return _Encoded(texts, with_text, chunks, cached, report)

    def _missing(
        self, req: RerankRequest, ids: list[DocId | None], unknown: np.ndarray, policy: str, where: str
    ) -> list[dict[str, Any]]:
        """Report the candidates that are neither in the index nor encoded, or raise under "error"."""
        docs = req.documents
        positions = np.flatnonzero(unknown).tolist()
        has_text = {i for i in positions if docs is not None and docs[i].text is not None}
        missing = [
            {"index": i, "id": ids[i], "reason": "no_model" if i in has_text else "not_in_index"} for i in positions
        ]
        if policy == "error":
            no_model = sum(1 for m in missing if m["reason"] == "no_model")
            hint = (
                f" ({no_model} of them carry text, but this service has no model to encode it: start it with --model)"
                if no_model
                else ""
            )
            shown = [str(ids[i]) if ids[i] is not None else f"documents[{i}]" for i in positions]
            raise ApiError(
                422,
                where + _unknown_message(shown, hint) + '. Send "missing": "skip" or "zero" to rank the others.',
                "unknown_ids",
            )
        return missing


def _best_chunks(scores: np.ndarray, n: int, enc: _Encoded, positions: np.ndarray) -> np.ndarray:
    """The ``n`` candidates' scores, a chunked document's being its best chunk's (the first
    best on a tie); records ``best_chunk`` in its report entry."""
    out = np.array(scores[:n], dtype=np.float64)
    at = 0
    for pos, c, entry in zip(enc.docs, enc.chunks, enc.report):
        k = len(c.texts)
        if k > 1:
            mine = scores[positions[at : at + k]]
            best = int(np.argmax(mine))
            out[pos] = mine[best]
            entry["best_chunk"] = best
        at += k
    return out
