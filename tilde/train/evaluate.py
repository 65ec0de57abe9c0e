"""A small re-ranking evaluation used while training (``python -m tilde.train.evaluate``):
re-rank a dataset's BM25 top-100 with a TILDEv2 model (index built over exactly the candidate
passages, through the product's own ``build_index`` + ``Reranker``), or with teacher document
vectors scored TILDEv2-style (the no-training floor), and print nDCG@10, MRR@10, R@100 next to
BM25's, computed with ir-measures.

TREC DL folders (``queries.tsv``, ``qrels.trec``, ``run.bm25.top100.trec``, ``passages.tsv``):
MRR and recall count grade >= 2 as relevant. SciFact (``corpus.jsonl.gz``, ``queries.test.tsv``,
``qrels.test.trec``): BM25 top-100 from bm25s (k1=0.9, b=0.4), grade >= 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tilde.io import read_collection, read_qrels, read_queries, read_run, write_jsonl
from tilde.rank.feedback import Feedback
from tilde.text import TextProcessor

__all__ = ["Dataset", "evaluate", "load_dataset", "metrics", "main"]


@dataclass(frozen=True)
class Dataset:
    name: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    run: dict[str, list[str]]  # BM25 candidates, best first
    bm25_scores: dict[str, dict[str, float]]
    collection: Path
    rel_level: int


def load_dataset(folder: str | os.PathLike[str]) -> Dataset:
    d = Path(folder)
    if (d / "run.bm25.top100.trec").is_file():
        raw = read_run(d / "run.bm25.top100.trec")
        qrels = read_qrels(d / "qrels.trec")
        queries = {q.qid: q.text for q in read_queries(d / "queries.tsv") if q.qid in qrels}
        run = {q: [e.docid for e in raw[q]] for q in queries if q in raw}
        scores = {q: {e.docid: e.score for e in raw[q]} for q in run}
        return Dataset(d.name, queries, qrels, run, scores, d / "passages.tsv", 2)
    if (d / "corpus.jsonl.gz").is_file():
        import bm25s

        qrels = read_qrels(d / "qrels.test.trec")
        queries = {q.qid: q.text for q in read_queries(d / "queries.test.tsv") if q.qid in qrels}
        passages = list(read_collection(d / "corpus.jsonl.gz"))
        retriever = bm25s.BM25(k1=0.9, b=0.4)
        retriever.index(
            bm25s.tokenize([p.text or "" for p in passages], stopwords="en", show_progress=False), show_progress=False
        )
        qids = list(queries)
        docs, sc = retriever.retrieve(
            bm25s.tokenize([queries[q] for q in qids], stopwords="en", show_progress=False),
            k=100,
            show_progress=False,
            n_threads=1,
        )
        run = {q: [passages[int(j)].pid for j in docs[i]] for i, q in enumerate(qids)}
        scores = {q: {passages[int(j)].pid: float(s) for j, s in zip(docs[i], sc[i])} for i, q in enumerate(qids)}
        return Dataset(d.name, queries, qrels, run, scores, d / "corpus.jsonl.gz", 1)
    raise FileNotFoundError(f"{d}: neither a TREC DL folder nor SciFact")


def metrics(ds: Dataset, run: dict[str, dict[str, float]]) -> dict[str, float]:
    import ir_measures
    from ir_measures import RR, R, nDCG

    wanted = [nDCG @ 10, RR(rel=ds.rel_level) @ 10, R(rel=ds.rel_level) @ 100]
    qrels = [ir_measures.Qrel(q, d, g) for q, docs in ds.qrels.items() for d, g in docs.items()]
    scored = [ir_measures.ScoredDoc(q, d, s) for q, docs in run.items() for d, s in docs.items()]
    agg = ir_measures.calc_aggregate(wanted, qrels, scored)
    return {"ndcg@10": agg[wanted[0]], "mrr@10": agg[wanted[1]], "r@100": agg[wanted[2]]}


def _candidate_pids(ds: Dataset) -> set[str]:
    return {p for docs in ds.run.values() for p in docs}


def _collection_file(ds: Dataset, expanded: str | None, tmp: Path) -> Path:
    """The candidate passages only: the expanded JSONL filtered, or the raw texts."""
    wanted = _candidate_pids(ds)
    src = Path(expanded) if expanded else ds.collection
    records = []
    for p in read_collection(src):
        if p.pid in wanted:
            records.append({"pid": p.pid, "psg": list(p.ids) if p.ids is not None else p.text})
    path = tmp / "candidates.jsonl"
    write_jsonl(path, records)
    meta = Path(str(src) + ".meta.json")
    if meta.is_file():
        Path(str(path) + ".meta.json").write_text(meta.read_text("utf-8"), "utf-8")
    return path


def _rerank(ds: Dataset, score_fn) -> dict[str, dict[str, float]]:  # type: ignore[no-untyped-def]
    out = {}
    for qid, cands in ds.run.items():
        scores = score_fn(ds.queries[qid], cands)
        # Ties keep BM25 order: a tiny rank-based epsilon, as the reranker's stable sort does.
        out[qid] = {p: float(s) - 1e-6 * i for i, (p, s) in enumerate(zip(cands, scores))}
    return out


def evaluate(
    data: str | os.PathLike[str],
    *,
    model: str | None = None,
    expanded: str | None = None,
    vectors: str | None = None,
    term_weights: str | None = None,
    tokenizer: str | None = None,
    teacher: bool = False,
    feedback: Feedback | str | None = "index",
) -> dict[str, dict[str, float]]:
    """Figures for BM25 and for ``model`` (a TILDEv2 checkpoint) or ``vectors`` (teacher
    document vectors restricted to each passage's own + expansion tokens, the floor)."""
    ds = load_dataset(data)
    out = {"bm25": metrics(ds, ds.bm25_scores)}
    if model is not None:
        from tilde.index.build import build_index
        from tilde.rank import Reranker

        with tempfile.TemporaryDirectory() as tmp:
            coll = _collection_file(ds, expanded, Path(tmp))
            build_index(model, coll, Path(tmp) / "index", progress=False)
            rr = Reranker.load(Path(tmp) / "index", feedback=feedback)
            if rr.feedback is not None:
                out["model-plain"] = metrics(ds, _rerank(ds, lambda q, c: _scores(rr, q, c, None)))
            out["model"] = metrics(ds, _rerank(ds, lambda q, c: _scores(rr, q, c)))
    if vectors is not None:
        from tilde.train.teacher import SparseVectors

        text = TextProcessor.load(tokenizer) if tokenizer else TextProcessor.load(_default_tokenizer())
        vec = SparseVectors.load(vectors)
        row = {str(k): i for i, k in enumerate(vec.keys.tolist())}
        tw = np.load(term_weights) if term_weights else None
        allowed = {}
        for p in read_collection(Path(expanded) if expanded else ds.collection):
            if p.pid in row:
                ids = np.asarray(p.ids if p.ids is not None else text.token_ids(p.text or ""), dtype=np.int64)
                ids = np.unique(text.drop_stop_ids(ids[:190]))  # the same 192-token window as the index
                w = vec.lookup(row[p.pid], ids)
                allowed[p.pid] = dict(zip(ids.tolist(), (w * tw[ids] if tw is not None else w).tolist()))

        def floor(q: str, cands: list[str]) -> list[float]:
            qids = text.query_ids(q).tolist()
            return [sum(allowed.get(p, {}).get(t, 0.0) for t in qids) for p in cands]

        out["floor" + ("*qw" if tw is not None else "")] = metrics(ds, _rerank(ds, floor))
        if teacher:
            from tilde.train.prepare import _encode_queries
            from tilde.train.teacher import SpladeTeacher

            qids = list(ds.run)
            qvec = _encode_queries(SpladeTeacher(head_dtype="bfloat16"), text, [ds.queries[q] for q in qids])
            qrow = {q: i for i, q in enumerate(qids)}

            def full(q_text: str, cands: list[str], _q: list[str] = []) -> list[float]:  # noqa: B006
                qd = qvec.dense(qrow[_q[0]], text.vocab_size) if _q else None
                assert qd is not None
                return [float(np.dot(qd[vec.row(row[p])[0]], vec.row(row[p])[1])) if p in row else 0.0 for p in cands]

            run = {}
            for qid, cands in ds.run.items():
                scores = full(ds.queries[qid], cands, [qid])
                run[qid] = {p: float(s) - 1e-6 * i for i, (p, s) in enumerate(zip(cands, scores))}
            out["teacher"] = metrics(ds, run)
    return out


def _scores(rr, query: str, cands: list[str], feedback: object = "reranker") -> list[float]:  # type: ignore[no-untyped-def]
    res = rr.rerank(query, cands, missing="zero", feedback=feedback)
    by_id = {str(cands[i]): float(s) for i, s in zip(res.order, res.scores)}
    return [by_id.get(str(c), 0.0) for c in cands]


def _default_tokenizer() -> str:
    from tilde.train.teacher import splade_tiny_path

    return str(splade_tiny_path())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tilde.train.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a TREC DL folder of ../shared/data, or scifact")
    p.add_argument("--model", help="TILDEv2 checkpoint")
    p.add_argument("--expanded", help="expanded collection (JSONL of token ids) covering the candidates")
    p.add_argument("--vectors", help="teacher document vectors (.npz): the no-training floor")
    p.add_argument("--term-weights", help="per-term query weights (.npy) for --vectors")
    p.add_argument(
        "--teacher", action="store_true", help="also full SPLADE scoring (teacher query encoder) with --vectors"
    )
    p.add_argument("--name", default=None, help="model name for the last line")
    p.add_argument("--feedback", default="index", help="pseudo-relevance feedback: index (the model's), off, D,T,W")
    args = p.parse_args(argv)
    from tilde.rank.feedback import feedback_arg

    res = evaluate(
        args.data,
        model=args.model,
        expanded=args.expanded,
        vectors=args.vectors,
        term_weights=args.term_weights,
        teacher=args.teacher,
        feedback=feedback_arg(args.feedback),
    )
    for system, m in res.items():
        print(f"{Path(args.data).name:10s} {system:10s} " + " ".join(f"{k}={v:.4f}" for k, v in m.items()))
    main_sys = "model" if "model" in res else next(k for k in res if k != "bm25") if len(res) > 1 else "bm25"
    print(
        f"ndcg@10={res[main_sys]['ndcg@10']:.4f} mrr@10={res[main_sys]['mrr@10']:.4f} "
        f"bm25_ndcg@10={res['bm25']['ndcg@10']:.4f} model={args.name or args.model or args.vectors}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
