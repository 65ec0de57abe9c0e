"""The one-pass impact index and the scoring modes over it (tokens, mlm, dense, fused), each
against a plain-Python definition, on tiny models built from a BertConfig."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tilde.index.format import IndexFormatError
from tilde.index.reader import TildeIndex
from tilde.rank import Reranker
from tilde.rank.fusion import minmax
from tilde.rank.scoring import Scoring
from tilde.text import TextProcessor, expansion_bad_ids

PIDS = ["10", "3", "7", "25", "1", "8", "40", "2"]
QUERIES = ["the cat on the road", "fish in the river bank", "read a book", "big red dogs dogs", "sun moon stars"]


def naive_impact(model_dir: Path, passage: str, top_k: int, max_length: int) -> dict[int, float]:
    """The definition, computed the slow way: full MLM logits at every position."""
    import torch
    from transformers import BertForMaskedLM

    text = TextProcessor.load(model_dir)
    model = BertForMaskedLM.from_pretrained(model_dir).eval()
    cls, sep, pad = text.special_id("[CLS]"), text.special_id("[SEP]"), text.special_id("[PAD]")
    ids = text.token_ids(passage).tolist()
    row = [cls, *ids[: max_length - 2], sep]
    padded = row + [pad] * (max_length - len(row))
    mask = [1] * len(row) + [0] * (max_length - len(row))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([padded]), attention_mask=torch.tensor([mask])).logits[0]
    best = logits[: len(row)].max(dim=0).values.double().numpy()
    weight = np.log1p(np.maximum(best, 0.0))
    stop = set(text.stop_ids.tolist())
    excluded = set(padded) | set(expansion_bad_ids(text.vocab).tolist())
    order = np.argsort(-best, kind="stable")[:top_k]
    expansion = {int(t) for t in order if best[t] > 0 and int(t) not in excluded}
    own = {t for t in row[1:-1] if t not in stop}
    out = {}
    for t in own | expansion:
        w16 = float(np.float16(weight[t]))
        if w16 > 0:
            out[t] = w16
    return out


def test_impact_weights_equal_the_naive_definition(impact_index: Path, tiny_mlm: Path) -> None:
    idx = TildeIndex.open(impact_index)
    m = idx.manifest
    assert m.weighting == "impact" and m.impact is not None and m.impact["top_k"] == 20
    collection = dict(line.split("\t") for line in (impact_index.parent / "collection.tsv").read_text().splitlines())
    for row, pid in enumerate(PIDS):
        toks, ws = idx.postings(row)
        got = dict(zip(toks.tolist(), ws.tolist()))
        want = naive_impact(tiny_mlm, collection[pid], top_k=20, max_length=32)
        # Model outputs: float tolerance (CPUs differ by an ulp); a weight at the edge of 0 may
        # appear on one side only, so compare over the union.
        for t in set(got) | set(want):
            assert got.get(t, 0.0) == pytest.approx(want.get(t, 0.0), abs=2e-3), (pid, t)
        assert len(set(got) ^ set(want)) <= 1


def _scores(res: object) -> dict[str, float]:
    return {d.docid: d.score for d in res.results}  # type: ignore[attr-defined]


def test_tokens_mode_is_the_tildev2_sum(impact_index: Path) -> None:
    rr = Reranker.load(impact_index, scoring="tokens")
    idx = rr.index
    for q in QUERIES:
        res = rr.rerank(q, PIDS)
        assert res.mode == "tokens" and res.signals == ("tokens",)
        qids = rr.text.query_ids(q).tolist()  # repeats count
        for row, pid in enumerate(PIDS):
            toks, ws = idx.postings(row)
            table = dict(zip(toks.tolist(), ws.tolist()))
            assert _scores(res)[pid] == sum(table.get(t, 0.0) for t in qids)  # exact: stored weights


def test_mlm_mode_is_q_dot_d_over_stored_tokens(impact_index: Path) -> None:
    rr = Reranker.load(impact_index, scoring="mlm")
    enc = rr.encoder("mlm")
    for q in QUERIES:
        qi, qw = enc.encode(q)
        qv = dict(zip(np.asarray(qi).tolist(), np.asarray(qw, dtype=np.float64).tolist()))
        res = rr.rerank(q, PIDS)
        assert res.signals == ("mlm",)
        for row, pid in enumerate(PIDS):
            toks, ws = rr.index.postings(row)
            want = sum(qv.get(t, 0.0) * float(w) for t, w in zip(toks.tolist(), ws.tolist()))
            assert _scores(res)[pid] == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_mlm_query_encoder_matches_torch(impact_index: Path, tiny_mlm: Path) -> None:
    """The ONNX query encoder shipped in the index equals the torch MLM (float tolerance)."""
    import torch
    from transformers import BertForMaskedLM

    rr = Reranker.load(impact_index, scoring="mlm")
    enc = rr.encoder("mlm")
    model = BertForMaskedLM.from_pretrained(tiny_mlm).eval()
    for q in QUERIES:
        ids = enc.input_ids(q)
        with torch.no_grad():
            mask = torch.ones(1, len(ids), dtype=torch.long)
            logits = model(input_ids=torch.tensor([ids]), attention_mask=mask).logits
        want = torch.log1p(torch.relu(logits[0].max(dim=0).values)).numpy()
        got = np.zeros_like(want)
        qi, qw = enc.encode(q)
        got[np.asarray(qi)] = qw
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_dense_mode_equals_numpy_on_the_stored_vectors(impact_index: Path) -> None:
    rr = Reranker.load(impact_index, scoring="dense")
    dense = rr.index.dense
    assert dense is not None and dense.codec == "fp16" and len(dense) == len(PIDS)
    enc = rr.encoder("dense")
    import faiss  # the reference reading of the stored vectors: faiss itself

    fx = faiss.read_index(str(impact_index / "dense.faiss"))
    vectors = fx.reconstruct_n(0, fx.ntotal)
    for q in QUERIES:
        v = enc.encode(q)
        res = rr.rerank(q, PIDS)
        for row, pid in enumerate(PIDS):
            assert _scores(res)[pid] == pytest.approx(float(vectors[row] @ v), abs=1e-6)


def test_fused_mode_follows_its_definition(impact_index: Path) -> None:
    rr = Reranker.load(impact_index)  # the index recommends fused scoring
    assert rr.scoring.mode == "fused"
    cands = PIDS[::-1] + ["unknown"]
    first = np.arange(len(cands), dtype=np.float64)[::-1] * 1.5
    mlm = rr.with_scoring("mlm")
    dense = rr.with_scoring("dense")
    for q in QUERIES:
        res = rr.rerank(q, cands, missing="zero", first_stage=first)
        assert set(res.signals) == {"mlm", "dense", "first_stage"}
        known = np.array([c != "unknown" for c in cands])
        s_m = np.zeros(len(cands))
        s_d = np.zeros(len(cands))
        for i, c in enumerate(cands):
            if c != "unknown":
                s_m[i] = _scores(mlm.rerank(q, [c]))[c]
                s_d[i] = _scores(dense.rerank(q, [c]))[c]
        want = (0.5 * minmax(s_m, known) + 0.4 * minmax(s_d, known) + 0.1 * minmax(first, known)) / 1.0
        want[~known] = 0.0
        got = _scores(res)
        for i, c in enumerate(cands):
            if c != "unknown":
                assert got[c] == pytest.approx(want[i], abs=1e-9)
        # without first-stage scores, that weight drops out and the rest are renormalised
        res2 = rr.rerank(q, PIDS)
        assert set(res2.signals) == {"mlm", "dense"}
        assert max(d.score for d in res2.results) <= 1.0 + 1e-12


def test_text_encoded_on_the_fly_scores_like_its_indexed_copy(impact_index: Path, tiny_mlm: Path,
                                                              tiny_bi_encoder: Path) -> None:
    from service.encoder import TextEncoder

    rr = Reranker.load(impact_index)
    collection = dict(line.split("\t") for line in (impact_index.parent / "collection.tsv").read_text().splitlines())
    enc = TextEncoder(str(tiny_mlm), rr.text, rr.index, dense_model=str(tiny_bi_encoder))
    texts = enc.encode([collection[p] for p in PIDS])
    rows = rr.index.lookup(PIDS)
    none = np.full(len(PIDS), -1, dtype=np.int64)
    positions = np.arange(len(PIDS))
    for mode in ("tokens", "mlm", "dense", "fused"):
        for q in QUERIES:
            indexed = rr.score(q, rows, mode=mode)
            encoded = rr.score(q, none, mode=mode, texts=texts, text_positions=positions)
            if mode in ("tokens", "mlm"):  # same stored weights, same kernel: exact
                np.testing.assert_array_equal(encoded.scores, indexed.scores)
            else:  # the bi-encoder's float output, quantised as the index stores it
                np.testing.assert_allclose(encoded.scores, indexed.scores, atol=2e-3)


def test_modes_need_their_parts(tmp_path: Path, tiny_mlm: Path) -> None:
    from tilde.index.impact import build_impact_index

    coll = tmp_path / "c.tsv"
    coll.write_text("1\tthe cat sat\n2\tdogs run fast\n", encoding="utf-8")
    build_impact_index(str(tiny_mlm), coll, tmp_path / "idx", top_k=10, max_length=16, query_encoders=False,
                       progress=False)
    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert m["dense"] is None and m["query_encoders"] is None and m["scoring"] is None
    rr = Reranker.load(tmp_path / "idx")
    assert rr.scoring.mode == "tokens"
    assert [d.docid for d in rr.rerank("cat", ["1", "2"]).results][0] == "1"
    with pytest.raises(IndexFormatError, match="no mlm query encoder"):
        rr.rerank("cat", ["1", "2"], mode="mlm")
    with pytest.raises(IndexFormatError, match="no dense vectors"):
        rr.rerank("cat", ["1", "2"], mode="dense")
    with pytest.raises(IndexFormatError, match="no (mlm query encoder|dense vectors)"):
        Reranker.load(tmp_path / "idx", scoring="fused:mlm=0.5,dense=0.5").rerank("cat", ["1"])
    with pytest.raises(ValueError, match="fused"):
        Reranker.load(tmp_path / "idx", scoring="fused")  # nothing recommended to take weights from


def test_impact_build_resumes_to_the_same_bytes(tmp_path: Path, tiny_mlm: Path, tiny_bi_encoder: Path) -> None:
    from tilde.index.impact import build_impact_index

    coll = tmp_path / "c.tsv"
    coll.write_text("".join(f"{i}\tthe cat number {i} sat on {i % 3} roads\n" for i in range(9)), encoding="utf-8")
    kw = dict(top_k=10, max_length=16, dense_model=str(tiny_bi_encoder), query_encoders=False, batch_size=2,
              chunk_batches=1, progress=False)
    build_impact_index(str(tiny_mlm), coll, tmp_path / "a", **kw)  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        build_impact_index(str(tiny_mlm), coll, tmp_path / "b", stop_after_chunks=2, **kw)  # type: ignore[arg-type]
    summary = build_impact_index(str(tiny_mlm), coll, tmp_path / "b", **kw)  # type: ignore[arg-type]
    assert summary.resumed_from == 4
    for name in ("offsets.npy", "tokens.npy", "weights.npy", "dense.faiss"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_service_scores_texts_like_the_index_in_every_mode(impact_index: Path, tiny_mlm: Path,
                                                           tiny_bi_encoder: Path) -> None:
    from service.app import create_app
    from service.config import ServiceConfig

    app = create_app(ServiceConfig(index=str(impact_index), model=str(tiny_mlm), dense_model=str(tiny_bi_encoder)))
    client = app.test_client()
    collection = dict(line.split("\t") for line in (impact_index.parent / "collection.tsv").read_text().splitlines())
    info = client.get("/info").get_json()
    assert info["scoring"]["recommended"].startswith("fused:") and info["index"]["weighting"] == "impact"
    for mode in (None, "tokens", "mlm", "dense"):
        body: dict[str, object] = {"query": "fish in the river bank", "ids": PIDS[:4]}
        if mode:
            body["mode"] = mode
        by_id = client.post("/v1/rerank", json=body).get_json()
        docs = [{"id": f"new-{p}", "text": collection[p]} for p in PIDS[:4]]
        text_body = {k: v for k, v in body.items() if k != "ids"}
        by_text = client.post("/v1/rerank", json={**text_body, "documents": docs}).get_json()
        assert by_id["meta"]["mode"] == by_text["meta"]["mode"] == (mode or info["scoring"]["mode"])
        assert len(by_text["meta"]["encoded"]) == 4
        ids = {r["index"]: r["relevance_score"] for r in by_id["results"]}
        texts = {r["index"]: r["relevance_score"] for r in by_text["results"]}
        for i in ids:
            assert texts[i] == pytest.approx(ids[i], abs=0 if mode in ("tokens", "mlm") else 2e-3)
    bad = client.post("/v1/rerank", json={"query": "fish", "ids": PIDS[:2], "mode": "nonsense"})
    assert bad.status_code == 422 and bad.get_json()["error"]["code"] == "invalid"


def test_query_encoder_pool_is_made_per_process(impact_index: Path) -> None:
    """A pool made before a fork has no thread in the child (a preloading service master):
    the re-ranker makes a new one in each process."""
    import os

    rr = Reranker.load(impact_index)  # fused: both encoders, side by side
    rr.parallel_encoders = True
    first = rr.rerank("fish in the river bank", PIDS)
    pool = rr._pool
    assert pool is not None and rr._pool_pid == os.getpid()
    rr._pool_pid = -1  # as in a forked child
    again = rr.rerank("fish in the river bank", PIDS)
    assert rr._pool is not pool and rr._pool_pid == os.getpid()
    assert [d.docid for d in again.results] == [d.docid for d in first.results]


def test_dense_feedback_follows_its_definition(impact_index: Path, tiny_mlm: Path, tiny_bi_encoder: Path) -> None:
    """fused + dense_feedback: fuse, move the dense query towards the mean stored vector of the
    best ``docs`` candidates, recompute the dense signal, fuse again; texts encoded on the fly
    take part like their indexed copies."""
    from service.encoder import TextEncoder
    from tilde.rank.scoring import parse_scoring

    rr = Reranker.load(impact_index)
    spec = "fused:mlm=0.5,dense=0.4,first_stage=0.1;dense_feedback=2:0.8"
    sc = parse_scoring(spec)
    assert str(sc) == spec and sc.dense_feedback == {"docs": 2, "weight": 0.8}
    assert Scoring.from_dict(sc.to_dict()) == sc
    fb = rr.with_scoring(spec)
    plain = rr.with_scoring("fused:mlm=0.5,dense=0.4,first_stage=0.1")
    dense = rr.index.dense
    assert dense is not None
    first = np.linspace(3.0, 1.0, len(PIDS))
    rows = rr.index.lookup(PIDS)
    known = np.ones(len(PIDS), dtype=bool)
    for q in QUERIES:
        base = plain.score(q, rows, first_stage=first)
        best = np.argsort(-base.scores, kind="stable")[:2]
        q2 = rr.encoder("dense").encode(q) + np.float32(0.8) * dense.vectors(rows[best]).mean(axis=0)
        q2 = q2 / np.linalg.norm(q2)
        s_m = rr.score(q, rows, mode="mlm").scores
        s_d = dense.vectors(rows).astype(np.float64) @ q2.astype(np.float64)
        want = 0.5 * minmax(s_m, known) + 0.4 * minmax(s_d, known) + 0.1 * minmax(first, known)
        got = fb.score(q, rows, first_stage=first).scores
        np.testing.assert_allclose(got, want, atol=1e-6)
    collection = dict(line.split("\t") for line in (impact_index.parent / "collection.tsv").read_text().splitlines())
    texts = TextEncoder(str(tiny_mlm), rr.text, rr.index, dense_model=str(tiny_bi_encoder)).encode(
        [collection[p] for p in PIDS[:3]])
    mixed = rows.copy()
    mixed[:3] = -1
    for q in QUERIES:
        indexed = fb.score(q, rows, first_stage=first).scores
        encoded = fb.score(q, mixed, first_stage=first, texts=texts, text_positions=np.arange(3)).scores
        np.testing.assert_allclose(encoded, indexed, atol=3e-3)
    for bad in ("fused:mlm=1;dense_feedback=2:1", "fused:dense=1;dense_feedback=0:1", "fused:dense=1;prf=2:1",
                "fused:dense=1;dense_feedback=2"):
        with pytest.raises(ValueError):
            parse_scoring(bad)


def test_pad_width_buckets() -> None:
    from tilde.index.impact import pad_width

    assert [pad_width(n, 512) for n in (3, 128, 129, 256, 257, 512)] == [128, 128, 256, 256, 512, 512]
    assert [pad_width(n, 300) for n in (10, 200, 299)] == [128, 256, 300]
    assert pad_width(10, 32) == 32  # a max_length under 128 is the only width
    assert pad_width(5, 512, "max_length") == 512  # indexes written before buckets
    with pytest.raises(ValueError, match="padding"):
        pad_width(5, 512, "bogus")


def test_long_max_length_pads_each_passage_to_its_bucket(tmp_path: Path, tiny_mlm: Path) -> None:
    """With max_length 256, passages of up to 128 ids get exactly the weights of a max_length-128
    index (same padded width), a longer one its whole text (the naive definition, to float
    tolerance), and the service's encoder gives every passage the index's weights bit for bit."""
    from service.encoder import TextEncoder
    from tilde.index.impact import build_impact_index

    words = "cat dog road river bank book fish park ball moon sun stars car red big small".split()
    rng = np.random.default_rng(0)
    rows = [("1", "the cat sat on the road"), ("2", " ".join(rng.choice(words, 120))),
            ("3", " ".join(rng.choice(words, 200))), ("4", "fish swim in the river")]
    coll = tmp_path / "c.tsv"
    coll.write_text("".join(f"{p}\t{t}\n" for p, t in rows), encoding="utf-8")
    kw = dict(top_k=10, query_encoders=False, batch_size=4, progress=False)
    build_impact_index(str(tiny_mlm), coll, tmp_path / "long", max_length=256, **kw)  # type: ignore[arg-type]
    build_impact_index(str(tiny_mlm), coll, tmp_path / "short", max_length=128, **kw)  # type: ignore[arg-type]
    long, short = TildeIndex.open(tmp_path / "long"), TildeIndex.open(tmp_path / "short")
    assert long.manifest.impact is not None and long.manifest.impact["padding"] == "buckets"
    text = TextProcessor.load(tiny_mlm)
    lengths = [len(text.token_ids(t)) + 2 for _, t in rows]
    assert lengths[0] <= 128 < lengths[1] < lengths[2] <= 256  # widths 128, 256, 256
    for r, (pid, passage) in enumerate(rows):
        toks, ws = long.postings(r)
        if lengths[r] <= 128:
            s_toks, s_ws = short.postings(r)
            np.testing.assert_array_equal(toks, s_toks)
            np.testing.assert_array_equal(ws, s_ws)
        got = dict(zip(toks.tolist(), ws.tolist()))
        want = naive_impact(tiny_mlm, passage, top_k=10, max_length=256)
        for t in set(got) | set(want):
            assert got.get(t, 0.0) == pytest.approx(want.get(t, 0.0), abs=2e-3), (pid, t)
    rr = Reranker.load(tmp_path / "long")
    enc = TextEncoder(str(tiny_mlm), rr.text, rr.index)
    for (toks, ws), r in zip(enc.postings([t for _, t in rows]), range(len(rows))):
        i_toks, i_ws = long.postings(r)
        np.testing.assert_array_equal(toks, i_toks)
        np.testing.assert_array_equal(ws, i_ws)
