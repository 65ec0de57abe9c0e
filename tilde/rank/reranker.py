"""``Reranker``: query text + candidate docids -> TILDEv2 scores, sorted.

Needs only numpy, numba and ``tokenizers``: no torch, no transformers on the query path.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from tilde.index.format import IndexFormatError
from tilde.index.keys import as_id_sequence
from tilde.index.reader import TildeIndex
from tilde.rank.feedback import Feedback, feedback_terms
from tilde.rank.fusion import fuse
from tilde.rank.kernel import prepare_query, score_rows, score_rows_dense
from tilde.rank.scoring import FIRST_STAGE, Scoring, parse_scoring
from tilde.rank.texts import EncodedTexts
from tilde.text import TextProcessor

if TYPE_CHECKING:
    from tilde.metering import Recorder

logger = logging.getLogger(__name__)

__all__ = ["MISSING_POLICIES", "RerankResult", "Reranker", "Scored", "ScoredDoc", "UnknownDocidError"]

MISSING_POLICIES = ("error", "skip", "zero")
INDEX_DEFAULT = "index"  # feedback as the index manifest recommends (its model's tilde_feedback)


class UnknownDocidError(KeyError):
    """Candidate ids that are not in the index, under the "error" policy."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = list(missing)
        shown = ", ".join(repr(m) for m in self.missing[:10])
        more = f" and {len(self.missing) - 10} more" if len(self.missing) > 10 else ""
        super().__init__(f"{len(self.missing)} candidate id(s) not in the index: {shown}{more}")

    def __str__(self) -> str:
        return str(self.args[0])


class ScoredDoc(NamedTuple):
    index: int  # type: ignore[assignment]  # position in the caller's list (shadows tuple.index, as Cohere names it)
    docid: str
    score: float


@dataclass(frozen=True)
class RerankResult:
    """Scores sorted best first. ``order`` holds positions into the candidate list; ties keep
    the candidates' input order. ``missing`` lists ids not in the index (policy "skip" leaves
    them out, "zero" puts them last with score 0)."""

    candidates: Sequence[str | int]
    order: np.ndarray
    scores: np.ndarray
    missing: tuple[str, ...]
    query_tokens: int
    timing_ms: dict[str, float] = field(default_factory=dict)
    feedback_terms: int = 0  # expansion tokens pseudo-relevance feedback added (0: plain TILDEv2)
    mode: str = "tokens"  # the scoring mode (tilde.rank.scoring), e.g. "fused:mlm=0.3,dense=0.6"
    signals: tuple[str, ...] = ("tokens",)  # the signals that scored it (fused: those that took part)

    @property
    def results(self) -> list[ScoredDoc]:
        c = self.candidates
        return [ScoredDoc(int(i), str(c[i]), float(s)) for i, s in zip(self.order.tolist(), self.scores.tolist())]

    def __len__(self) -> int:
        return int(self.order.size)


@dataclass(frozen=True)
class Scored:
    """Unsorted scores of a candidate list (:meth:`Reranker.score`)."""

    scores: np.ndarray
    signals: tuple[str, ...]
    query_tokens: int
    feedback_terms: int
    timing_ms: dict[str, float]


class Reranker:
    """TILDEv2 re-ranking over a memory-mapped index.

    >>> rr = Reranker.load("index_dir")
    >>> rr.rerank("what is a tilde", ["7", "3", "12"], top_n=2).results
    """

    def __init__(
        self,
        index: TildeIndex,
        text: TextProcessor,
        missing: str = "error",
        recorder: Recorder | None = None,
        feedback: Feedback | str | None = INDEX_DEFAULT,
        scoring: Scoring | str | None = INDEX_DEFAULT,
    ) -> None:
        if missing not in MISSING_POLICIES:
            raise ValueError(f"missing must be one of {MISSING_POLICIES}, not {missing!r}")
        index.check_tokenizer(text.vocab_hash, text.vocab_size)
        self.index = index
        self.text = text
        self.missing = missing
        self.recorder = recorder
        self.feedback = self._feedback(feedback)
        self.scoring = self._scoring(scoring)
        self._encoders: dict[str, Any] = {}
        # Run the two query encoders of a fused mode side by side (a thread; see _encode_query).
        self.parallel_encoders = (os.cpu_count() or 1) > 1
        self._pool: Any = None
        self._pool_pid = 0
        # Bind the arrays once: attribute lookups through the dataclass cost more than the kernel
        # on small candidate lists.
        self._arrays = (index.offsets, index.tokens, index.weight_codes, index.weight_table)
        self._vocab = int(index.manifest.vocab_size)

    @classmethod
    def load(
        cls,
        index_dir: str | os.PathLike[str],
        tokenizer: str | os.PathLike[str] | None = None,
        missing: str = "error",
        recorder: Recorder | None = None,
        feedback: Feedback | str | None = INDEX_DEFAULT,
        scoring: Scoring | str | None = INDEX_DEFAULT,
    ) -> Reranker:
        """Open an index; the tokenizer defaults to the one stored with it. ``feedback``:
        ``"index"`` (default) = what the index's model recommends (none for reference models),
        None = plain TILDEv2 scoring, or a :class:`Feedback`. ``scoring``: ``"index"`` (default)
        = the mode the index recommends (``tokens`` when it recommends none), a mode name
        (``tokens``, ``mlm``, ``dense``, ``fused``, ``fused:mlm=0.3,...``) or a :class:`Scoring`."""
        index = TildeIndex.open(index_dir)
        if tokenizer is None:
            if not index.tokenizer_path.is_file():
                raise IndexFormatError(f"{index.tokenizer_path}: missing; the index stores no tokenizer (pass one)")
            try:
                text = TextProcessor.load(index.tokenizer_path)
            except Exception as exc:  # tokenizers raises its own exception type for a damaged file
                first = str(exc).splitlines()[0] if str(exc) else repr(exc)
                raise IndexFormatError(
                    f"{index.tokenizer_path}: not a loadable tokenizer ({first}); the index is damaged"
                ) from None
        else:
            text = TextProcessor.load(tokenizer)
        return cls(index, text, missing=missing, recorder=recorder, feedback=feedback, scoring=scoring)

    def with_feedback(self, feedback: Feedback | str | None) -> Reranker:
        """A re-ranker over the same mapped index and tokenizer with another feedback setting
        (e.g. None, to report plain TILDEv2 next to the model's recommended scoring)."""
        other = Reranker(self.index, self.text, missing=self.missing, recorder=self.recorder, feedback=feedback,
                         scoring=self.scoring)
        other._encoders = self._encoders
        return other

    def with_scoring(self, scoring: Scoring | str | None) -> Reranker:
        """A re-ranker over the same mapped index, tokenizer and query encoders in another mode."""
        other = Reranker(self.index, self.text, missing=self.missing, recorder=self.recorder,
                         feedback=self.feedback, scoring=scoring)
        other._encoders = self._encoders
        return other

    @property
    def recommended(self) -> Scoring:
        """The scoring the index recommends (``tokens`` when it names none)."""
        rec = self.index.manifest.scoring
        return Scoring.from_dict(rec, where=f"{self.index.path}: manifest scoring") if rec else Scoring("tokens")

    def _scoring(self, scoring: Scoring | str | None) -> Scoring:
        if isinstance(scoring, Scoring):
            return scoring
        if scoring is None or scoring == INDEX_DEFAULT:
            return self.recommended
        return parse_scoring(scoring, self.recommended)

    def _encode_query(self, query: str, needed: tuple[str, ...]) -> dict[str, Any]:
        """The query vectors the mode needs. Both encoders at once run side by side: ONNX Runtime
        releases the GIL, so on two cores the pair costs about the slower one alone."""
        kinds = [k for k in ("mlm", "dense") if k in needed]
        encoders = {k: self.encoder(k) for k in kinds}
        if len(kinds) == 2 and self.parallel_encoders:
            if self._pool is None or self._pool_pid != os.getpid():
                # A pool made before a fork (a service's preloading master) has no thread in the
                # child: its tasks would never run. Each process makes its own.
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tilde-query-encoder")
                self._pool_pid = os.getpid()
            dense = self._pool.submit(encoders["dense"].encode, query)
            out = {"mlm": encoders["mlm"].encode(query)}
            out["dense"] = dense.result()
            return out
        return {k: encoders[k].encode(query) for k in kinds}

    def encoder(self, kind: str) -> Any:
        """The index's ``kind`` ("mlm" or "dense") ONNX query encoder, loaded once; a clear error
        when the index does not ship it (or, for dense, has no passage vectors)."""
        if kind in self._encoders:
            return self._encoders[kind]
        folder = self.index.query_encoder_dir(kind)
        if kind == "dense" and self.index.manifest.dense is None:
            raise IndexFormatError(
                f"{self.index.path} has no dense vectors: mode 'dense' (and fusion with it) needs an index built "
                f"with a bi-encoder (tilde build --dense MODEL); use mode tokens or mlm"
            )
        if folder is None or not folder.is_dir():
            raise IndexFormatError(
                f"{self.index.path} has no {kind} query encoder (query/{kind}): scoring with {kind!r} needs one; "
                f"rebuild with `tilde build` (which exports it), or use mode tokens"
            )
        from tilde.encoders.query import DenseQueryEncoder, MlmQueryEncoder

        enc: Any = MlmQueryEncoder.load(folder) if kind == "mlm" else DenseQueryEncoder.load(folder)
        if kind == "dense" and self.index.dense is not None and int(enc.dim) != self.index.dense.dim:
            raise IndexFormatError(f"{folder}: a {enc.dim}-dim encoder for {self.index.dense.dim}-dim vectors")
        self._encoders[kind] = enc
        return enc

    def _feedback(self, feedback: Feedback | str | None) -> Feedback | None:
        if feedback is None or isinstance(feedback, Feedback):
            return feedback
        if feedback == INDEX_DEFAULT:
            rec = self.index.manifest.feedback
            return Feedback.from_dict(rec, where=f"{self.index.path}: manifest feedback") if rec else None
        raise ValueError(f"feedback must be a Feedback, None or {INDEX_DEFAULT!r}, not {feedback!r}")

    def warmup(self, prefault: bool = False) -> None:
        """Compile the kernel and run one query, so the first request is not slow. With
        ``prefault``, also map every page of the index (see :meth:`TildeIndex.prefault`)."""
        if prefault:
            self.index.prefault()
        if prefault and self.index.manifest.dense is not None and "dense" in self.scoring.signals:
            assert self.index.dense is not None
            self.index.dense.prefault()
        for kind in ("mlm", "dense"):
            if kind in self.scoring.signals:
                self.encoder(kind).encode("warmup")
        if len(self.index):
            self.rerank("warmup", [self.index.docid(0)], missing="skip")
            if self.scoring.signals != ("tokens",):  # the tokens kernel too, for per-call modes
                self.rerank("warmup", [self.index.docid(0)], missing="skip", mode=Scoring("tokens"))
            if self.feedback is not None:  # compile the feedback pass too ("warmup" may match nothing)
                offsets, tokens, codes, table = self._arrays
                vocab = int(self.index.manifest.vocab_size)
                none = np.zeros(0, np.int64)
                feedback_terms(offsets, tokens, codes, table, np.zeros(1, np.int64), np.ones(1), none, 1, 1.0, vocab)
                score_rows_dense(offsets, tokens, codes, table, none, none, np.zeros(0), vocab)

    def score_ids(self, query_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Plain TILDEv2 scores of index ``rows`` (-1: 0.0). A damaged index raises
        :class:`IndexFormatError` naming the file (the kernel refuses; it never reads out of bounds)."""
        q, counts = prepare_query(query_ids)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        try:
            return score_rows(*self._arrays, rows, q, counts, self._vocab)
        except ValueError as exc:
            raise self.index.damage(rows, str(exc)) from None

    def rerank(
        self,
        query: str,
        candidates: Sequence[str | int],
        top_n: int | None = None,
        missing: str | None = None,
        feedback: Feedback | str | None = "reranker",
        mode: Scoring | str | None = None,
        first_stage: Sequence[float] | np.ndarray | None = None,
    ) -> RerankResult:
        """Score ``candidates`` (index docids) for ``query`` and sort them, best first.
        ``feedback`` overrides the re-ranker's setting for this call (None: off); ``mode`` its
        scoring (see :mod:`tilde.rank.scoring`); ``first_stage`` gives the candidates' first-stage
        scores (same order), which fused scoring uses when it weights them."""
        fb = self.feedback if feedback == "reranker" else self._feedback(feedback)
        sc = self.scoring if mode is None else self._scoring(mode)
        if isinstance(candidates, np.ndarray):  # numpy ids: Python values, so results show them as sent
            candidates = as_id_sequence(candidates)
        fs: np.ndarray | None = None
        if first_stage is not None:
            fs = np.asarray(first_stage, dtype=np.float64)
            if fs.shape != (len(candidates),):
                raise ValueError(f"first_stage has {fs.size} scores for {len(candidates)} candidates")
            if not np.all(np.isfinite(fs)):
                raise ValueError("first_stage scores must be finite numbers")
        policy = self.missing if missing is None else missing
        if policy not in MISSING_POLICIES:
            raise ValueError(f"missing must be one of {MISSING_POLICIES}, not {policy!r}")
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query is empty")
        if top_n is not None and top_n < 0:
            raise ValueError(f"top_n must be >= 0, not {top_n}")
        rec = self.recorder
        t0 = time.perf_counter()
        with rec.measure("score", items=len(candidates)) if rec is not None else nullcontext():
            rows = self.index.lookup(candidates)
        lookup_ms = (time.perf_counter() - t0) * 1e3
        scored = self.score(query, rows, mode=sc, feedback=fb, first_stage=fs)
        t3 = time.perf_counter()
        unknown = rows < 0
        missing_ids: tuple[str, ...] = ()
        scores = scored.scores
        if unknown.any():
            missing_pos = np.flatnonzero(unknown)
            missing_ids = tuple(str(candidates[i]) for i in missing_pos.tolist())
            if policy == "error":
                raise UnknownDocidError(missing_ids)
            known_pos = np.flatnonzero(~unknown)
            order = known_pos[np.argsort(-scores[known_pos], kind="stable")]
            if policy == "zero":
                order = np.concatenate([order, missing_pos])
        else:
            order = np.argsort(-scores, kind="stable")
        if top_n is not None:
            order = order[:top_n]
        timing = {**scored.timing_ms, "lookup": lookup_ms, "sort": (time.perf_counter() - t3) * 1e3}
        return RerankResult(candidates, order, scores[order], missing_ids, scored.query_tokens, timing,
                            scored.feedback_terms, str(sc), scored.signals)

    def score(
        self,
        query: str,
        rows: np.ndarray,
        *,
        mode: Scoring | str | None = None,
        feedback: Feedback | str | None = "reranker",
        first_stage: np.ndarray | None = None,
        texts: EncodedTexts | None = None,
        text_positions: np.ndarray | None = None,
        query_ids: np.ndarray | None = None,
    ) -> Scored:
        """Scores (unsorted, one per row) of index ``rows`` (-1: not in the index) for ``query``,
        in ``mode``. ``texts`` (:class:`EncodedTexts`, e.g. documents a service encoded on the
        fly) score the candidates at ``text_positions`` exactly as the index would score them if
        it held them; fused scoring normalises over indexed candidates and texts together.
        ``query_ids``: the query's token ids when the caller already has them (not tokenized twice)."""
        fb = self.feedback if feedback == "reranker" else self._feedback(feedback)
        sc = self.scoring if mode is None else self._scoring(mode)
        rec = self.recorder
        needed = sc.signals
        t0 = time.perf_counter()
        if query_ids is not None:
            q = np.asarray(query_ids, dtype=np.int64)
        else:
            with rec.measure("tokenize") if rec is not None else nullcontext():
                q = self.text.query_ids(query)
        t1 = time.perf_counter()
        qvec: dict[str, Any] = {}
        if "mlm" in needed or "dense" in needed:
            with rec.measure("encode") if rec is not None else nullcontext():
                qvec = self._encode_query(query, needed)
        t2 = time.perf_counter()
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        vocab = int(self.index.manifest.vocab_size)
        tpos = np.zeros(0, np.int64) if text_positions is None else np.asarray(text_positions, dtype=np.int64)
        if texts is not None and len(texts) != tpos.size:
            raise ValueError(f"{len(texts)} encoded texts for {tpos.size} positions")
        trows = np.arange(tpos.size, dtype=np.int64)
        mask = rows >= 0
        mask[tpos] = True
        signals: dict[str, np.ndarray] = {}
        added = 0
        timing: dict[str, float] = {}
        with rec.measure("score", items=rows.size) if rec is not None else nullcontext():
            if "tokens" in needed:
                signals["tokens"] = self.score_ids(q, rows)
                if texts is not None and tpos.size:
                    uq, counts = prepare_query(q)
                    signals["tokens"][tpos] = score_rows(*texts.arrays, trows, uq, counts)
                if fb is not None:
                    tf = time.perf_counter()
                    # Feedback passages come from the indexed candidates; texts get the same expansion.
                    ids, weights = self.expand(q, rows, signals["tokens"], fb)
                    added = int(ids.size)
                    if added and texts is not None and tpos.size:
                        signals["tokens"][tpos] += score_rows_dense(*texts.arrays, trows, ids, weights, vocab)
                    timing["feedback"] = (time.perf_counter() - tf) * 1e3
            if "mlm" in qvec:
                ids, w = qvec["mlm"]
                ids64, w64 = np.asarray(ids, dtype=np.int64), np.asarray(w, dtype=np.float64)
                signals["mlm"] = score_rows_dense(*self._arrays, rows, ids64, w64, vocab)
                if texts is not None and tpos.size:
                    signals["mlm"][tpos] = score_rows_dense(*texts.arrays, trows, ids64, w64, vocab)
        t3 = time.perf_counter()
        if "dense" in qvec:
            assert self.index.dense is not None
            signals["dense"] = self.index.dense.scores(rows, qvec["dense"])
            if texts is not None and tpos.size:
                if texts.dense is None:
                    raise ValueError("the encoded texts have no dense vectors, but the scoring uses the dense signal")
                signals["dense"][tpos] = self.index.dense.score_vectors(texts.dense, qvec["dense"])
            timing["dense"] = (time.perf_counter() - t3) * 1e3
        t4 = time.perf_counter()
        if sc.mode == "fused":
            if first_stage is not None:
                signals[FIRST_STAGE] = np.asarray(first_stage, dtype=np.float64)
            scores, used = fuse(signals, sc.weights, mask=mask, normalization=sc.normalization)
            if sc.dense_feedback and "dense" in qvec:
                signals["dense"] = self._dense_feedback(rows, mask, scores, qvec["dense"], sc.dense_feedback,
                                                        texts, tpos)
                scores, used = fuse(signals, sc.weights, mask=mask, normalization=sc.normalization)
            timing["fuse"] = (time.perf_counter() - t4) * 1e3
        else:
            scores, used = signals[sc.mode], (sc.mode,)
        timing.update({"tokenize": (t1 - t0) * 1e3, "score": (t3 - t2) * 1e3 - timing.get("feedback", 0.0)})
        if qvec:
            timing["encode"] = (t2 - t1) * 1e3
        return Scored(scores, used, int(q.size), added, timing)

    def _dense_feedback(
        self, rows: np.ndarray, mask: np.ndarray, scores: np.ndarray, query: np.ndarray,
        fb: Mapping[str, float], texts: EncodedTexts | None, tpos: np.ndarray,
    ) -> np.ndarray:
        """The dense signal again, for ``q' = q + weight * mean(v)`` over the vectors of the
        ``docs`` best scored candidates (indexed rows or encoded texts; vectors as stored)."""
        dense = self.index.dense
        assert dense is not None
        scored = np.flatnonzero(mask)
        best = scored[np.argsort(-scores[scored], kind="stable")[: int(fb["docs"])]]
        if best.size == 0:
            return dense.scores(rows, query)
        is_text = np.isin(best, tpos)
        vecs = [dense.vectors(rows[best[~is_text]])]
        if is_text.any() and texts is not None and texts.dense is not None:
            where = np.searchsorted(np.sort(tpos), best[is_text])
            order = np.argsort(tpos, kind="stable")
            vecs.append(dense.quantized(np.asarray(texts.dense)[order[where]]))
        q2 = np.asarray(query, dtype=np.float32).ravel() + np.float32(fb["weight"]) * np.concatenate(vecs).mean(axis=0)
        q2 /= max(float(np.linalg.norm(q2)), 1e-12)
        out = dense.scores(rows, q2)
        if texts is not None and tpos.size and texts.dense is not None:
            out[tpos] = dense.score_vectors(texts.dense, q2)
        return out

    def expand(
        self, q: np.ndarray, rows: np.ndarray, scores: np.ndarray, fb: Feedback
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pseudo-relevance feedback (:mod:`tilde.rank.feedback`): the expansion tokens (ids,
        weights) drawn from the best ``fb.docs`` indexed candidates (``rows`` >= 0) by their
        first-pass ``scores``; their weighted matches are added to ``scores`` in place."""
        none = (np.empty(0, np.int64), np.empty(0, np.float64))
        known = np.flatnonzero(rows >= 0)
        if known.size < 2 * fb.docs or q.size == 0:
            # Feeding back most of a short list would only re-weight each passage by its own terms.
            return none
        best = known[np.argsort(-scores[known], kind="stable")[: fb.docs]]
        best = best[scores[best] > 0]  # a passage matching no query token says nothing about it
        if best.size == 0:
            return none
        offsets, tokens, codes, table = self._arrays
        fb_rows = np.ascontiguousarray(rows[best], dtype=np.int64)
        try:
            ids, weights = feedback_terms(
                offsets,
                tokens,
                codes,
                table,
                fb_rows,
                np.ascontiguousarray(scores[best], dtype=np.float64),
                np.unique(q.astype(np.int64)),
                fb.terms,
                float(fb.weight),
                self._vocab,
            )
        except ValueError as exc:
            raise self.index.damage(fb_rows, str(exc)) from None
        if ids.size:
            rows64 = np.ascontiguousarray(rows, dtype=np.int64)
            try:
                scores += score_rows_dense(*self._arrays, rows64, ids, weights, self._vocab)
            except ValueError as exc:
                raise self.index.damage(rows64, str(exc)) from None
        return ids, weights

    def rerank_batch(
        self,
        requests: Iterable[tuple[str, Sequence[str | int]]],
        top_n: int | None = None,
        missing: str | None = None,
        feedback: Feedback | str | None = "reranker",
        mode: Scoring | str | None = None,
    ) -> list[RerankResult]:
        """Re-rank many (query, candidates) pairs; one result per pair, in order."""
        return [
            self.rerank(query, cands, top_n=top_n, missing=missing, feedback=feedback, mode=mode)
            for query, cands in requests
        ]
