"""What MS MARCO (8.8M passages) and 1B passages would take, projected from measurements here.

Measured on the first ``--passages`` DL21 passages (../shared/data/dl21/passages.tsv), with the
default recipe's models (splade-tiny impact pass, all-MiniLM-L6-v2 dense pass) on one torch
thread:

- build cost in **CPU seconds per passage** (``getrusage`` user + system of this process, so the
  figure holds on a busy machine, where wall time does not), for the impact pass alone and with
  the dense pass, as two real ``build_impact_index`` runs (the product path: tokenize, encode,
  write, merge; no query-encoder export);
- bytes per passage of each index file (postings, docids, offsets, dense codes);
- bytes per passage of the Lucene impact index Anserini builds from ``tilde export anserini``
  (Lucene is what an OpenSearch / Elasticsearch shard stores; skipped without Java or the jar).

Projections are arithmetic on those figures, stated with their assumptions: builds scale
linearly in cores (chunks are independent; ``--shard``/``--engine ray`` split them), and serving
maps the index (RAM is what the OS keeps cached; the docid table is what must stay resident).

    python benchmarks/scale_figures.py [--passages 512] [--cores 64] [--nodes 16]

Last line: cpu_s_per_passage_impact=<x> cpu_s_per_passage_with_dense=<y> bytes_per_passage=<z>
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dl21" / "passages.tsv"
SMALL = 32
SIZES = {"MS MARCO (8.8M)": 8_841_823, "1B": 1_000_000_000}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _build(collection: Path, out: Path, dense: str | None) -> tuple[float, float]:
    from tilde.index.impact import build_impact_index
    from tilde.models import DEFAULT_RECIPE, splade_tiny_path

    t0, c0 = time.perf_counter(), _cpu()
    build_impact_index(str(splade_tiny_path()), collection, out, top_k=DEFAULT_RECIPE.top_k,
                       max_length=DEFAULT_RECIPE.max_length, dense_model=dense, query_encoders=False,
                       progress=False, overwrite=True)
    return time.perf_counter() - t0, _cpu() - c0


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def _lucene_bytes(index: Path, work: Path) -> float | None:
    try:
        from tilde.export.anserini import export_anserini
        from tilde.first_stage.lucene import find_anserini_jar, find_java

        find_java(), find_anserini_jar()
        export_anserini(index, work / "anserini", build=True, progress=False, overwrite=True)
    except Exception as exc:  # no Java / jar here: the figure is left out, and said so
        print(f"lucene: skipped ({str(exc).splitlines()[0][:120]})")
        return None
    lucene = work / "anserini" / "lucene"
    return float(sum(p.stat().st_size for p in lucene.rglob("*") if p.is_file()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passages", type=int, default=512)
    ap.add_argument("--cores", type=int, default=64, help="cores of the 'one machine' projected (default 64)")
    ap.add_argument("--nodes", type=int, default=16, help="machines of the Ray cluster projected (default 16)")
    args = ap.parse_args()
    if args.passages <= SMALL:
        sys.exit(f"--passages must be more than {SMALL}")
    if not DATA.is_file():
        sys.exit(f"needs {DATA}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from tilde.models import minilm_path

    work = Path(tempfile.mkdtemp(prefix="tilde-scale-"))
    try:
        coll = work / "passages.tsv"
        with open(DATA, encoding="utf-8") as f:
            coll.write_text("".join(islice(f, args.passages)), encoding="utf-8")
        small = work / "small.tsv"
        with open(DATA, encoding="utf-8") as f:
            small.write_text("".join(islice(f, SMALL)), encoding="utf-8")
        n = args.passages
        load = os.getloadavg()[0]
        # Marginal cost: a build of N minus a build of SMALL passages (model loading, JIT and
        # the writer's fixed work cancel out), each after one warm-up build of its kind.
        measured = {}
        for name, dense in (("sparse", None), ("hybrid", str(minilm_path()))):
            _build(small, work / "warm", dense)
            w0, c0 = _build(small, work / "warm", dense)
            w1, c1 = _build(coll, work / name, dense)
            measured[name] = ((w1 - w0) / (n - SMALL), (c1 - c0) / (n - SMALL))
        wall_s, cpu_s = (x * n for x in measured["sparse"])
        wall_d, cpu_d = (x * n for x in measured["hybrid"])
        print(f"{n} DL21 passages, 1 torch thread, load average {load:.1f}; marginal cost over a {SMALL}-passage "
              f"build (wall figures depend on load; CPU figures much less)")
        print(f"impact pass:        {cpu_s / n * 1e3:7.2f} CPU ms/passage = {n / cpu_s:6.1f} passages per core-second "
              f"(wall {n / wall_s:.1f}/s)")
        print(f"impact + dense:     {cpu_d / n * 1e3:7.2f} CPU ms/passage = {n / cpu_d:6.1f} passages per core-second "
              f"(wall {n / wall_d:.1f}/s)")
        files = {p.name: p.stat().st_size for p in (work / "hybrid").iterdir() if p.is_file()}
        per = {k: v / n for k, v in sorted(files.items()) if k not in ("manifest.json", "tokenizer.json")}
        print("bytes/passage by file: " + ", ".join(f"{k} {v:.1f}" for k, v in per.items()))
        sparse = sum(v for k, v in per.items() if k != "dense.faiss")
        dense = per.get("dense.faiss", 0.0)
        resident = sum(v for k, v in per.items() if k.startswith("docids") or k.startswith("offsets"))
        lucene = _lucene_bytes(work / "sparse", work)
        lucene_pp = None if lucene is None else lucene / n
        if lucene_pp is not None:
            print(f"Lucene impact index (Anserini, from tilde export anserini): {lucene_pp:.1f} bytes/passage")
        print()
        for name, size in SIZES.items():
            core_h = size * cpu_d / n / 3600
            print(f"{name}: build {core_h:,.0f} core-hours (with dense; {size * cpu_s / n / 3600:,.0f} sparse only) = "
                  f"{core_h / args.cores:,.1f} h on one {args.cores}-core machine, "
                  f"{core_h / args.cores / args.nodes:,.2f} h on {args.nodes} such machines under Ray")
            print(f"  index on disk {_fmt_bytes(size * (sparse + dense))} ({_fmt_bytes(size * sparse)} sparse + "
                  f"{_fmt_bytes(size * dense)} dense); resident docid/offset tables {_fmt_bytes(size * resident)}; "
                  f"RAM to keep all of it cached {_fmt_bytes(size * (sparse + dense))}"
                  + (f"; Lucene impact index {_fmt_bytes(size * lucene_pp)}" if lucene_pp is not None else ""))
        print(f"cpu_s_per_passage_impact={cpu_s / n:.5f} cpu_s_per_passage_with_dense={cpu_d / n:.5f} "
              f"bytes_per_passage={sparse + dense:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
