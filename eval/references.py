"""Published figures that evaluations are printed next to, each with its source."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["REFERENCES", "Reference", "references_for"]


@dataclass(frozen=True)
class Reference:
    dataset: str  # "msmarco-dev" | "dl19" | "dl21" | "scifact"
    system: str
    metric: str  # a key of eval.metrics.MEASURE_LABELS
    value: float
    source: str


_ANSERINI_MSMARCO = "Anserini MS MARCO passage regression (Lucene BM25, top-1000)"
_TILDE_PAPER = "Zhuang & Zuccon, SIGIR 2021 / arXiv:2108.08513 (TILDEv2, TILDE m=200 expansion, BM25 top-1000)"
_RANK_LLM_DATA = "recomputed on this repo's shared run files (= published Anserini figures)"

REFERENCES: tuple[Reference, ...] = (
    Reference("msmarco-dev", "BM25 (k1=0.9, b=0.4)", "mrr@10", 0.184, _ANSERINI_MSMARCO),
    Reference("msmarco-dev", "BM25 tuned (k1=0.82, b=0.68)", "mrr@10", 0.187, _ANSERINI_MSMARCO),
    Reference("msmarco-dev", "TILDEv2 over BM25", "mrr@10", 0.330, _TILDE_PAPER),
    Reference("dl19", "BM25", "ndcg@10", 0.5058, _RANK_LLM_DATA),
    Reference("dl19", "TILDEv2 over BM25", "ndcg@10", 0.6747, "TILDEv2 paper, TREC DL 2019"),
    Reference("dl19", "TAS-B", "ndcg@10", 0.7210, _RANK_LLM_DATA),
    Reference("dl19", "SPLADE++ ED", "ndcg@10", 0.7308, _RANK_LLM_DATA),
    Reference("dl21", "BM25", "ndcg@10", 0.4458, _RANK_LLM_DATA),
    Reference("scifact", "BM25 flat (Anserini)", "ndcg@10", 0.6789,
              "Anserini regression beir-v1.0.0-scifact.flat (title+text in one field)"),
    Reference("scifact", "BM25 flat (Anserini)", "r@100", 0.9253, "Anserini regression beir-v1.0.0-scifact.flat"),
    Reference("scifact", "BM25 multifield (BEIR paper)", "ndcg@10", 0.665,
              "Thakur et al., BEIR (NeurIPS 2021 datasets track), Table 2; Anserini multifield 0.6647"),
)


def references_for(dataset: str) -> list[Reference]:
    return [r for r in REFERENCES if r.dataset == dataset]
