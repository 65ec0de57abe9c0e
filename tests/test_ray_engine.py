"""``--engine ray``: the same index, byte for byte, as the local build; resumable across engines.

One local Ray (2 CPUs, as CI has) serves the whole module; the Ray tests skip when Ray is not
installed. The local path must not import Ray at all."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import WORDS
from tilde.index.build import build_index
from tilde.index.ray_engine import RayEngine

ROOT = Path(__file__).resolve().parents[1]
FILES = ("offsets.npy", "tokens.npy", "weights.npy", "docids.npy", "docids_sorted.npy", "docids_order.npy",
         "tokenizer.json", "manifest.json", "dense.faiss")


def _bytes(folder: Path) -> dict[str, bytes]:
    found = {f: (folder / f).read_bytes() for f in sorted(os.listdir(folder)) if (folder / f).is_file()}
    assert set(found) <= set(FILES) and "manifest.json" in found, sorted(found)
    return found


def _collection(path: Path, n: int = 37) -> Path:
    rng = random.Random(7)
    rows = [f"{5 * i + 2}\t{' '.join(rng.choice(WORDS) for _ in range(rng.randint(0, 24)))}\n" for i in range(n)]
    path.write_text("".join(rows), encoding="utf-8")
    return path


def test_the_local_path_does_not_import_ray(tiny_model: Path, tmp_path: Path) -> None:
    coll = _collection(tmp_path / "c.tsv", 5)
    code = f"""
import sys
import tilde.cli, tilde.index.ray_engine
from tilde.index.build import build_index
tilde.cli.build_parser().parse_args(["index", "--collection", "c", "--output", "o", "--engine", "ray"])
build_index({str(tiny_model)!r}, {str(coll)!r}, {str(tmp_path / 'i')!r}, batch_size=2, progress=False)
assert tilde.cli.main(["index", "--model", {str(tiny_model)!r}, "--collection", {str(coll)!r},
                       "--output", {str(tmp_path / 'j')!r}, "--no-progress"]) == 0
print(sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_plan_never_asks_for_more_than_the_cluster_has() -> None:
    assert RayEngine().plan({"CPU": 2.0}) == (2, 1.0, 0.0)
    assert RayEngine(actors=1).plan({"CPU": 4.0}) == (1, 4.0, 0.0)  # one actor, four torch threads
    assert RayEngine(actors=3).plan({"CPU": 2.0}) == (3, 2.0 / 3.0, 0.0)  # fractional: all three fit
    assert RayEngine(gpus_per_actor=0.5).plan({"CPU": 8.0, "GPU": 2.0}) == (4, 2.0, 0.5)
    with pytest.raises(ValueError, match="GPUs"):
        RayEngine(gpus_per_actor=1).plan({"CPU": 8.0})
    with pytest.raises(ValueError, match="wait forever"):
        RayEngine(actors=2, cpus_per_actor=2).plan({"CPU": 2.0})
    with pytest.raises(ValueError, match="at least 1"):
        RayEngine(actors=0)


def test_the_cli_refuses_ray_options_without_the_ray_engine(tiny_model: Path, tmp_path: Path) -> None:
    from tilde.cli import main as cli

    coll = _collection(tmp_path / "c.tsv", 3)
    assert cli(["index", "--model", str(tiny_model), "--collection", str(coll), "--output", str(tmp_path / "i"),
                "--ray-actors", "2"]) == 2
    assert not (tmp_path / "i").exists()


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    import logging

    ray.init(num_cpus=2, log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_ray_build_equals_the_local_build_and_resumes(local_ray: None, tiny_model: Path, tmp_path: Path) -> None:
    coll = _collection(tmp_path / "c.tsv")  # 37 passages: 4 chunks of 10 (the last one short)
    kw = {"batch_size": 5, "chunk_batches": 2, "progress": False}
    local = build_index(str(tiny_model), coll, tmp_path / "local", **kw)  # type: ignore[arg-type]
    engine = RayEngine(actors=2)
    # a crash after 2 chunks on Ray, resumed on Ray: the finished chunks are kept, the bytes are the
    # local build's (chunks 0-1 from the first run, 2-3 from the second: every chunk came from Ray)
    with pytest.raises(KeyboardInterrupt):
        build_index(str(tiny_model), coll, tmp_path / "ray", engine=engine, stop_after_chunks=2, **kw)  # type: ignore[arg-type]
    assert sorted(os.listdir(tmp_path / "ray" / ".partial"))[:2] == ["chunk-00000000.npz", "chunk-00000001.npz"]
    assert not (tmp_path / "ray" / ".partial" / "chunk-00000002.npz").exists()
    resumed = build_index(str(tiny_model), coll, tmp_path / "ray", engine=engine, **kw)  # type: ignore[arg-type]
    assert resumed.resumed_from == 20
    assert _bytes(tmp_path / "ray") == _bytes(tmp_path / "local")
    assert not (tmp_path / "ray" / ".partial").exists()
    assert (resumed.passages, resumed.postings, resumed.empty_passages) == (local.passages, local.postings,
                                                                            local.empty_passages)
    assert "passages/s" in resumed.format() and resumed.joules > 0  # the actors' CPU time is charged


@pytest.mark.slow
def test_ray_impact_build_equals_the_local_build(local_ray: None, tiny_mlm: Path, tiny_bi_encoder: Path,
                                                 tmp_path: Path) -> None:
    from tilde.index.impact import build_impact_index

    coll = _collection(tmp_path / "c.tsv", 23)
    kw = {"top_k": 20, "max_length": 32, "dense_model": str(tiny_bi_encoder), "query_encoders": False,
          "batch_size": 4, "chunk_batches": 2, "progress": False}
    build_impact_index(str(tiny_mlm), coll, tmp_path / "local", **kw)  # type: ignore[arg-type]
    # across engines: a local build interrupted after one chunk, finished on Ray
    with pytest.raises(KeyboardInterrupt):
        build_impact_index(str(tiny_mlm), coll, tmp_path / "ray", stop_after_chunks=1, **kw)  # type: ignore[arg-type]
    s = build_impact_index(str(tiny_mlm), coll, tmp_path / "ray", engine=RayEngine(actors=2), **kw)  # type: ignore[arg-type]
    assert s.resumed_from == 8
    files = _bytes(tmp_path / "ray")
    assert files == _bytes(tmp_path / "local") and "dense.faiss" in files  # the dense part too
    assert json.loads(files["manifest.json"])["weighting"] == "impact"


@pytest.mark.slow
def test_ray_build_reports_bad_input_as_the_local_build_does(local_ray: None, tiny_model: Path,
                                                             tmp_path: Path) -> None:
    from tilde.io import FormatError

    coll = tmp_path / "c.jsonl"
    coll.write_text('{"pid": "1", "psg": [10, 11]}\n{"pid": "2", "psg": [10, 999999]}\n')
    with pytest.raises(FormatError, match="c.jsonl:2"):
        build_index(str(tiny_model), coll, tmp_path / "i", progress=False, engine=RayEngine(actors=1))
    assert not (tmp_path / "i" / "manifest.json").exists()


@pytest.mark.slow
def test_cli_index_engine_ray(local_ray: None, tiny_model: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from tilde.cli import main as cli

    coll = _collection(tmp_path / "c.tsv", 12)
    common = ["--model", str(tiny_model), "--collection", str(coll), "--batch-size", "3", "--chunk-batches", "2",
              "--no-progress"]
    assert cli(["index", *common, "--output", str(tmp_path / "local")]) == 0
    assert cli(["index", *common, "--output", str(tmp_path / "ray"), "--engine", "ray", "--ray-actors", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("indexed 12 passages") == 2
    assert _bytes(tmp_path / "ray") == _bytes(tmp_path / "local")


def _dying_job(model: str, die_at_call: int, after: str) -> tuple[object, object]:
    """The TILDEv2 job, except that the actor process exits abruptly at its ``die_at_call``-th
    batch, once the file ``after`` exists (a result not yet delivered dies with its actor, so the
    test waits until the driver has written the chunk before, to be deterministic)."""
    import dataclasses
    import time

    from tilde.index.build import tildev2_job

    job, text = tildev2_job(model)
    calls = [0]

    def encode(batch, where):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == die_at_call:
            deadline = time.monotonic() + 120
            while not os.path.exists(after) and time.monotonic() < deadline:
                time.sleep(0.05)
            os._exit(1)  # a killed worker: no exception, no cleanup
        return job.encode(batch, where)

    return dataclasses.replace(job, encode=encode), text


@pytest.mark.slow
def test_a_killed_actor_fails_the_build_cleanly_and_it_resumes(local_ray: None, tiny_model: Path,
                                                              tmp_path: Path) -> None:
    from functools import partial

    import ray

    from tilde.index.build import run_build, tildev2_job
    from tilde.index.ray_engine import RayWorkerError

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers need not import tests/
    coll = _collection(tmp_path / "c.tsv", 24)
    kw = {"batch_size": 4, "chunk_batches": 2, "progress": False}
    build_index(str(tiny_model), coll, tmp_path / "local", **kw)  # type: ignore[arg-type]
    job, text = tildev2_job(str(tiny_model))
    chunk0 = tmp_path / "ray" / ".partial" / "chunk-00000000.npz"
    # one actor: chunk 0 (batches 1-2) is written, the actor dies in its 4th batch (chunk 1)
    with pytest.raises(RayWorkerError, match="re-run the same command to resume"):
        run_build(job, text, coll, tmp_path / "ray", engine=RayEngine(actors=1),
                  job_factory=partial(_dying_job, str(tiny_model), 4, str(chunk0)), **kw)  # type: ignore[arg-type]
    assert chunk0.is_file()
    assert not (tmp_path / "ray" / "manifest.json").exists()
    s = build_index(str(tiny_model), coll, tmp_path / "ray", engine=RayEngine(actors=2), **kw)  # type: ignore[arg-type]
    assert s.resumed_from == 8
    assert _bytes(tmp_path / "ray") == _bytes(tmp_path / "local")
