"""Build throughput, local engine vs ``--engine ray``, on the same collection in the same run.

A splade-tiny impact build (no dense part, no query encoders) of the first ``--passages`` DL21
passages (../shared/data/dl21/passages.tsv), three ways:

- ``local``: this process (torch's default threads, one per core), and ``local-1t`` with one
  torch thread (on a busy machine one thread can beat two);
- ``ray``: :class:`tilde.index.ray_engine.RayEngine` with ``--actors`` actors on a local Ray of
  all CPUs (plain actors holding the model; the driver reads and writes the chunks);
- ``ray-data`` (``--ray-data``): the same chunk work as ``Dataset.map_batches`` over an actor
  pool (``concurrency=actors``) on ``ray.data.from_items`` of the chunks, for the choice between
  the two (the engine uses plain actors; this probe needs ``pip install 'ray[data]==2.60.0'``).

Passages/s is the whole build as the summary reports it: the Ray figures include starting Ray
(``ray.init``) and the actors (each imports torch and loads the model), which a longer build
amortises; ``ray_steady`` excludes them (the build's time after the actors are ready). The Ray
build's files are compared with the local build's, byte for byte (``identical=``).

    python benchmarks/build_engines.py [--passages 512] [--actors 2] [--ray-data]

Last line: local_passages_per_s=<x> local_1thread_passages_per_s=<w> ray_passages_per_s=<y>
ray_steady_passages_per_s=<z> actors=<n> identical=<b>
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dl21" / "passages.tsv"


def _files(folder: Path) -> dict[str, bytes]:
    return {f: (folder / f).read_bytes() for f in sorted(os.listdir(folder)) if (folder / f).is_file()}


def _ray_data_build(model: str, coll: Path, actors: int, batch_size: int, chunk_batches: int,
                    settings: dict[str, object]) -> tuple[float, float, dict[str, object]]:
    """The same chunks through ``map_batches`` with an actor pool; returns (seconds incl. start, encode seconds,
    the chunk results in order) — the index itself is not finalized (this is a throughput probe)."""
    from functools import partial

    import ray

    from tilde.index.build import _chunked, encode_chunk
    from tilde.index.impact import impact_job
    from tilde.io import read_collection

    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    factory = partial(impact_job, model, **settings)  # type: ignore[arg-type]

    class Encode:
        def __init__(self) -> None:
            self.job = factory()[0]

        def __call__(self, batch: dict[str, object]) -> dict[str, object]:
            chunk = list(batch["passages"])  # type: ignore[call-overload]
            return {"k": batch["k"], "result": [encode_chunk(self.job, chunk[0], batch_size, str(coll))]}

    chunks = [{"k": k, "passages": c} for k, c in _chunked(read_collection(coll), batch_size * chunk_batches, 0)]
    # Actors claim one CPU each but the pool leaves one CPU free for the read/from_items tasks
    # (an actor pool claiming every CPU deadlocks the pipeline).
    per_cpu = max(0.5, (os.cpu_count() or 1) - 1) / actors
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ds = ray.data.from_items(chunks).map_batches(Encode, batch_size=1, num_cpus=per_cpu,
                                                 compute=ray.data.ActorPoolStrategy(size=actors))
    first = None
    out: dict[str, object] = {}
    for row in ds.iter_rows():
        first = first or time.perf_counter()
        out[str(row["k"])] = row["result"]
    seconds = time.perf_counter() - started
    ray.shutdown()
    return seconds, time.perf_counter() - (first or started), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passages", type=int, default=512)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--chunk-batches", type=int, default=2, help="batches per chunk (the unit sent to an actor)")
    ap.add_argument("--ray-data", action="store_true", help="also time the Ray Data map_batches variant")
    args = ap.parse_args()
    if not DATA.is_file():
        sys.exit(f"needs {DATA}")
    try:
        import ray  # noqa: F401
        if args.ray_data:
            import ray.data  # noqa: F401
    except ImportError:
        sys.exit("needs pip install 'tilde[ray]' (and 'ray[data]==2.60.0' for --ray-data)")
    from tilde.index.impact import build_impact_index
    from tilde.index.ray_engine import RayEngine
    from tilde.models import bundled_path

    model = bundled_path("splade-tiny")
    work = Path(tempfile.mkdtemp(prefix="tilde-engines-bench-"))
    try:
        coll = work / "c.tsv"
        with DATA.open(encoding="utf-8") as src:
            coll.write_text("".join(line for _, line in zip(range(args.passages), src)), encoding="utf-8")
        settings: dict[str, object] = {"top_k": 200, "max_length": 128, "dense_model": None,
                                       "query_encoders": False}
        kw = {**settings, "batch_size": args.batch_size, "chunk_batches": args.chunk_batches, "progress": False}
        chunks = -(-args.passages // (args.batch_size * args.chunk_batches))
        print(f"{args.passages} DL21 passages, splade-tiny impact build, batch {args.batch_size}, "
              f"{chunks} chunks of {args.batch_size * args.chunk_batches}; {os.cpu_count()} CPUs (shared, noisy)")

        local = build_impact_index(model, coll, work / "local", **kw)  # type: ignore[arg-type]
        print(f"local      : {local.passages_per_s:7.1f} passages/s ({local.seconds:.1f} s)")
        reference = _files(work / "local")
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        local1 = build_impact_index(model, coll, work / "local1", **kw)  # type: ignore[arg-type]
        torch.set_num_threads(threads)
        print(f"local-1t   : {local1.passages_per_s:7.1f} passages/s ({local1.seconds:.1f} s, one torch thread) "
              f"identical={_files(work / 'local1') == reference}")

        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False)
        init_s = time.perf_counter() - t0
        ready: list[float] = []

        class Ready(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "ready in" in record.getMessage():
                    ready.append(float(record.getMessage().rsplit("ready in ", 1)[1].split()[0]))

        engine_log = logging.getLogger("tilde.index.ray_engine")
        engine_log.setLevel(logging.INFO)
        engine_log.addHandler(Ready())
        try:
            ray_s = build_impact_index(model, coll, work / "ray", engine=RayEngine(actors=args.actors), **kw)  # type: ignore[arg-type]
        finally:
            ray.shutdown()
        same = _files(work / "ray") == reference
        start_s = ready[0] if ready else float("nan")
        steady = args.passages / max(ray_s.seconds - start_s, 1e-9)
        ray_total = args.passages / (ray_s.seconds + init_s)
        print(f"ray        : {ray_total:7.1f} passages/s ({ray_s.seconds + init_s:.1f} s: ray.init {init_s:.1f} s, "
              f"{args.actors} actors started in {start_s:.1f} s); without those starts {steady:.1f} passages/s; "
              f"identical={same}")
        if args.ray_data:
            seconds, enc, _ = _ray_data_build(model, coll, args.actors, args.batch_size, args.chunk_batches,
                                              settings)
            print(f"ray-data   : {args.passages / seconds:7.1f} passages/s ({seconds:.1f} s incl. start; "
                  f"{enc:.1f} s from first result to last; map_batches, {args.actors} actors, not finalized)")
        print(f"local_passages_per_s={local.passages_per_s:.1f} "
              f"local_1thread_passages_per_s={local1.passages_per_s:.1f} ray_passages_per_s={ray_total:.1f} "
              f"ray_steady_passages_per_s={steady:.1f} actors={args.actors} identical={same}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
