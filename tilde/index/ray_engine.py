"""``--engine ray``: the chunks of an index build encoded by Ray actors that hold the model.

The driver (this process) does what a local build does — reads the collection, cuts it into
the same chunks, writes every chunk file under ``<output>/.partial/`` and finalizes — and hands
each chunk's encoding to a pool of actors, each of which built the job once
(:func:`tilde.index.build.encode_chunk`, the very function the local loop calls). So the output
is the local build's, byte for byte, and a crashed build resumes from its finished chunks with
either engine. Only the chunk data crosses the network: workers of a cluster need the model
(path or hub id) but not the collection or the output directory.

Why plain actors and not ``Dataset.map_batches``: measured on the build (benchmarks/build_engines.py),
and the chunk is the unit of resumption, so the driver must see chunks whole and in order anyway.
Nothing but the actors asks Ray for resources, so the deadlock of a ``map_batches`` actor pool that
claims every CPU (its read tasks then never run) cannot happen; the actors' total request is
capped at what the cluster has, so none waits forever for a place.

Importing this module does not import Ray; :meth:`RayEngine.encode_chunks` does.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from tilde.index.build import BuildJob, ChunkEngine, ChunkResult, JobFactory, encode_chunk
from tilde.io import Passage
from tilde.metering import CpuTimeMeter, Recorder

logger = logging.getLogger(__name__)

__all__ = ["RayEngine", "RayUnavailableError", "RayWorkerError"]

# Chunks queued per actor: one encoding, one waiting (so an actor never idles between chunks).
IN_FLIGHT_PER_ACTOR = 2
# How long the actors may take to start (model load included) before the build gives up.
START_TIMEOUT_S = 600.0


class RayUnavailableError(ImportError):
    """``--engine ray`` without Ray installed."""


class RayWorkerError(OSError):
    """A Ray actor died (killed, out of memory, node lost); the finished chunks are kept."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(
            "--engine ray needs Ray: pip install 'tilde[ray]' (or use the default --engine local)"
        ) from None
    return ray


class _ChunkEncoder:
    """The body of one actor: the job, built once, encoding whole chunks."""

    def __init__(self, factory: JobFactory, threads: int | None) -> None:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self.job: BuildJob = factory()[0]

    def identity(self) -> dict[str, Any]:
        return dict(self.job.identity)

    def encode(self, passages: list[Passage], batch_size: int, where: str) -> tuple[ChunkResult, float]:
        cpu = time.process_time()
        result = encode_chunk(self.job, passages, batch_size, where)
        return result, time.process_time() - cpu


@dataclass(frozen=True)
class RayEngine(ChunkEngine):
    """Encode the chunks on Ray: ``address`` of a running cluster (None: start a local Ray for
    this build with ``num_cpus`` CPUs, default all), ``actors`` (default: one per GPU share
    with ``gpus_per_actor``, else one per CPU), ``cpus_per_actor`` (default: the CPUs shared
    evenly, at most what there is, so every actor can be placed)."""

    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float = 0.0
    cpus_per_actor: float | None = None
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"--ray-actors must be at least 1, not {self.actors}")
        if not (math.isfinite(self.gpus_per_actor) and self.gpus_per_actor >= 0):
            raise ValueError(f"--ray-gpus-per-actor must be >= 0, not {self.gpus_per_actor}")
        if self.cpus_per_actor is not None and not self.cpus_per_actor > 0:
            raise ValueError(f"cpus per actor must be positive, not {self.cpus_per_actor}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num_cpus must be at least 1, not {self.num_cpus}")

    def plan(self, cluster: dict[str, float]) -> tuple[int, float, float]:
        """(actors, cpus per actor, gpus per actor) for a cluster with these resources."""
        cpus, gpus = float(cluster.get("CPU", 0.0)), float(cluster.get("GPU", 0.0))
        if self.gpus_per_actor > 0:
            if gpus < self.gpus_per_actor:
                raise ValueError(f"--ray-gpus-per-actor {self.gpus_per_actor:g}: the Ray cluster has {gpus:g} GPUs")
            actors = self.actors or int(gpus // self.gpus_per_actor)
            if actors * self.gpus_per_actor > gpus + 1e-9:
                raise ValueError(f"{actors} actors x {self.gpus_per_actor:g} GPUs need more than the cluster's "
                                 f"{gpus:g} GPUs")
        else:
            actors = self.actors or max(1, int(cpus))
        if cpus <= 0:
            raise ValueError("the Ray cluster has no CPUs")
        per_cpu = self.cpus_per_actor if self.cpus_per_actor is not None else min(1.0, cpus / actors)
        if self.cpus_per_actor is None and actors <= cpus:
            per_cpu = float(int(cpus // actors))  # whole CPUs: torch gets that many threads
        if actors * per_cpu > cpus + 1e-9:
            raise ValueError(f"{actors} actors x {per_cpu:g} CPUs need more than the cluster's {cpus:g} CPUs "
                             f"(they would wait forever for a place)")
        return actors, per_cpu, self.gpus_per_actor

    def _init(self, ray: Any) -> bool:
        """Connect to (or start) Ray; True when this call started it (and so must shut it down)."""
        if ray.is_initialized():
            return False
        # Quiet unless the command runs with -v: Ray's own warnings (token authentication of a local
        # instance, ...) are not the build's; the actors' output stays on the workers.
        level = logging.WARNING if logger.isEnabledFor(logging.INFO) else logging.ERROR
        kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": level,
                                  "include_dashboard": False, "configure_logging": True}
        if self.address is None and self.num_cpus is not None:
            kwargs["num_cpus"] = self.num_cpus
        ray.init(address=self.address, **kwargs)
        return True

    def encode_chunks(
        self, factory: JobFactory, job: BuildJob, chunks: Iterable[tuple[int, list[Passage]]], *,
        batch_size: int, where: str, recorder: Recorder, progress: Callable[[int], None],
    ) -> Iterator[tuple[int, ChunkResult, float]]:
        ray = _import_ray()
        source = iter(chunks)
        first = next(source, None)
        if first is None:  # nothing left to encode (an empty shard, or every chunk already written)
            return
        chunks = itertools.chain([first], source)
        started = self._init(ray)
        try:
            actors, per_cpu, per_gpu = self.plan(ray.cluster_resources())
            threads = max(1, int(per_cpu)) if per_gpu == 0 else None
            remote = ray.remote(num_cpus=per_cpu, num_gpus=per_gpu)(_ChunkEncoder)
            t0 = time.perf_counter()
            pool = [remote.remote(factory, threads) for _ in range(actors)]
            ready, waiting = ray.wait([a.identity.remote() for a in pool], num_returns=actors,
                                      timeout=START_TIMEOUT_S)
            if waiting:
                raise TimeoutError(f"only {len(ready)} of {actors} Ray actors started within {START_TIMEOUT_S:.0f} s "
                                   f"(each asks {per_cpu:g} CPU, {per_gpu:g} GPU; the cluster has "
                                   f"{ray.cluster_resources()})")
            for found in ray.get(ready):
                if found != dict(job.identity):
                    raise ValueError(f"a Ray worker built a different job than this machine ({found} vs "
                                     f"{dict(job.identity)}): same model files and device kind everywhere")
            logger.info("ray: %d actors x (%g CPU, %g GPU) ready in %.1f s", actors, per_cpu, per_gpu,
                        time.perf_counter() - t0)
            watts = recorder.meter.watts_per_core if isinstance(recorder.meter, CpuTimeMeter) else 0.0
            yield from _schedule(ray, pool, chunks, batch_size, where, progress, watts)
        finally:
            if started:
                ray.shutdown()


def _failure(ray: Any, exc: Exception, k: int) -> Exception:
    if isinstance(exc, ray.exceptions.RayTaskError):  # the actor's own error (bad input): as locally
        return exc.cause if isinstance(exc.cause, Exception) else exc
    first = str(exc).splitlines()[0] if str(exc) else ""
    return RayWorkerError(f"a Ray actor failed while encoding chunk {k} ({type(exc).__name__}: {first}); "
                          f"re-run the same command to resume (finished chunks are kept)")


def _schedule(
    ray: Any, pool: list[Any], chunks: Iterable[tuple[int, list[Passage]]], batch_size: int, where: str,
    progress: Callable[[int], None], watts_per_core: float,
) -> Iterator[tuple[int, ChunkResult, float]]:
    """Keep every actor busy, and yield the results in chunk order (the store counts consecutive
    chunks); at most ``IN_FLIGHT_PER_ACTOR`` chunks per actor are submitted or held. When a chunk
    fails, the chunks before it are still finished and yielded, then its error is raised."""
    free = deque(a for a in pool for _ in range(IN_FLIGHT_PER_ACTOR))
    capacity = len(free)
    pending: dict[Any, tuple[int, Any, int]] = {}
    done: dict[int, tuple[ChunkResult, float]] = {}
    source = iter(chunks)
    next_k: int | None = None
    exhausted = False
    failed_k: int | None = None
    failure: Exception | None = None
    while True:
        while failure is None and free and not exhausted and len(pending) + len(done) < capacity:
            item = next(source, None)
            if item is None:
                exhausted = True
                break
            k, passages = item
            next_k = k if next_k is None else next_k
            actor = free.popleft()
            pending[actor.encode.remote(passages, batch_size, where)] = (k, actor, len(passages))
        wanted = [ref for ref, (k, _, _) in pending.items() if failed_k is None or k < failed_k]
        if wanted:
            finished, _ = ray.wait(wanted, num_returns=1)
            for ref in finished:
                k, actor, n = pending.pop(ref)
                try:
                    done[k] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    if failed_k is None or k < failed_k:
                        failed_k, failure = k, _failure(ray, exc, k)
                    continue
                free.append(actor)
                progress(n)
        while next_k is not None and next_k in done and (failed_k is None or next_k < failed_k):
            result, cpu_s = done.pop(next_k)
            yield next_k, result, cpu_s * watts_per_core
            next_k += 1
        if failure is not None and failed_k is not None and not any(k < failed_k for k, _, _ in pending.values()):
            raise failure
        if failure is None and exhausted and not pending and not done:
            return
