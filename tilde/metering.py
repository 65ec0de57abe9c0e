"""Latency and energy accounting for every pipeline stage, with hooks.

Every stage (tokenize, lookup/score, serialise; expand and encode offline) is measured as a
block::

    rec = Recorder()                       # default_meter(): RAPL if readable, else CPU time
    with rec.measure("score", items=len(candidates)):
        ...
    print(format_summary(rec.summary(), rec.method, per="request"))

Each block yields one :class:`Measurement` (wall seconds, joules, the meter's method label,
item count, labels) which is kept on the recorder and handed to every registered hook
(:data:`hooks`, the module-level registry, plus any per-recorder :class:`Hooks`), so a caller can
forward measurements to logging, Prometheus or a file without this module knowing about them.

Energy comes from a pluggable :class:`EnergyMeter`:

* :class:`RaplMeter` — the package energy counters under ``/sys/class/powercap``. These count
  the whole CPU package (every process and thread), are updated roughly every millisecond, and
  on Linux >= 5.10 ``energy_uj`` is readable by root only. Per-request RAPL joules in a
  concurrent server therefore overlap between requests; RAPL is the right meter for offline jobs
  (joules per passage) and for whole-service totals.
* :class:`CpuTimeMeter` — CPU seconds × an assumed watts-per-core figure, per thread (request
  accounting in a threaded server) or per process (offline jobs with multi-threaded torch).
  An estimate, and labelled as such in every measurement.
* :class:`NullMeter` — no energy accounting.

The query service answers in about a millisecond, so the per-block overhead is kept to a few
microseconds: two ``perf_counter`` calls, two meter reads (one ``pread`` per RAPL package domain
per read, or one CPU-clock call), and a :class:`Measurement` only when someone will look at it
(``keep=True`` or at least one hook registered).
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

__all__ = [
    "DEFAULT_WATTS_PER_CORE",
    "DEFAULT_WINDOW",
    "CpuTimeMeter",
    "EnergyMeter",
    "Hooks",
    "Measurement",
    "NullMeter",
    "RaplMeter",
    "Recorder",
    "StageSummary",
    "add_hook",
    "default_meter",
    "format_summary",
    "hooks",
    "percentile",
]

logger = logging.getLogger(__name__)

#: Assumed average power of one busy core when no RAPL counter is readable. A rough figure for
#: a modern server core under load; override with ``TILDE_WATTS_PER_CORE``.
DEFAULT_WATTS_PER_CORE = 15.0

#: Number of most recent durations per stage kept for percentiles when ``keep=False``.
DEFAULT_WINDOW = 100_000

POWERCAP_ROOT = "/sys/class/powercap"

# Top-level package domains only ("intel-rapl:0"); subdomains ("intel-rapl:0:0", core/uncore/dram)
# are already included in their package's counter, so summing them would double count.
_PACKAGE_DOMAIN = re.compile(r"^(?:intel-rapl|amd-rapl):(\d+)$")


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measurement:
    """One measured block."""

    stage: str  # e.g. "tokenize", "score", "encode", "serialize", "request"
    seconds: float  # wall time
    joules: float  # energy attributed to this block by the meter
    method: str  # the meter's method label, e.g. "rapl" or "cpu-time*15W/core(thread)"
    items: int = 1  # passages / queries / candidates handled in the block
    labels: tuple[tuple[str, str], ...] = ()  # free-form extra labels, sorted by key

    @property
    def joules_per_item(self) -> float:
        return self.joules / self.items if self.items > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        """A flat, JSON-serialisable view (labels become a dict) for file or log hooks."""
        return {
            "stage": self.stage,
            "seconds": self.seconds,
            "joules": self.joules,
            "method": self.method,
            "items": self.items,
            "labels": dict(self.labels),
        }


# --------------------------------------------------------------------------------------------
# Energy meters
# --------------------------------------------------------------------------------------------


@runtime_checkable
class EnergyMeter(Protocol):
    """A monotonically non-decreasing joules counter; energy of a block is the difference of two
    reads. ``method`` labels every measurement so estimates are never mistaken for readings."""

    method: str

    def read(self) -> float: ...


class NullMeter:
    """No energy accounting: every block gets 0 J, labelled ``none``."""

    method: str = "none"

    def read(self) -> float:
        return 0.0


class CpuTimeMeter:
    """Estimated energy: CPU seconds × ``watts_per_core``.

    ``scope="thread"`` uses :func:`time.thread_time`, so in a threaded server each request is
    charged only for the CPU its own thread used; the start and end reads of a block must then
    happen on the same thread (they do inside ``Recorder.measure``). ``scope="process"`` uses
    :func:`time.process_time`, which covers every thread of the process — what an offline job
    running multi-threaded torch needs.
    """

    def __init__(
        self, watts_per_core: float = DEFAULT_WATTS_PER_CORE, scope: str = "thread"
    ) -> None:
        if scope not in ("thread", "process"):
            raise ValueError(f"scope must be 'thread' or 'process', got {scope!r}")
        watts = float(watts_per_core)
        if not math.isfinite(watts) or watts <= 0.0:
            raise ValueError(
                f"watts_per_core must be a positive finite number, got {watts_per_core!r}"
            )
        self.watts_per_core: float = watts
        self.scope: str = scope
        self.method: str = f"cpu-time*{watts:g}W/core({scope})"
        self._thread = scope == "thread"

    def read(self) -> float:
        # Look the clock up on the module at call time (cheap) rather than binding it once, so a
        # test can substitute a fake clock after the meter was built.
        cpu = time.thread_time() if self._thread else time.process_time()
        return cpu * self.watts_per_core


def _read_int(path: str) -> int:
    with open(path, "rb") as f:
        return int(f.read().strip())


def _package_domains(root: str) -> list[str]:
    """Paths of the top-level package domains under ``root``, in domain-number order."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    found: list[tuple[int, str, str]] = []
    for name in names:
        m = _PACKAGE_DOMAIN.match(name)
        if m is not None:
            found.append((int(m.group(1)), name, os.path.join(root, name)))
    found.sort()
    return [path for _, _, path in found]


def _close_fds(fds: list[int]) -> None:
    # Mark closed slots with -1 (not clear the list) so a later read() simply reopens them.
    for i, fd in enumerate(fds):
        if fd >= 0:
            fds[i] = -1
            try:
                os.close(fd)
            except OSError:
                pass


class RaplMeter:
    """Sum of the RAPL package energy counters (``<root>/intel-rapl:N/energy_uj``), in joules.

    The hardware counters are finite and wrap at ``max_energy_range_uj``; the last raw value per
    domain is kept so a decrease is read as a wrap (``max_range - last + new``) rather than as
    negative energy. ``read()`` returns the energy accumulated since the meter was built, in
    integer microjoules until the final division so block differences are exact.

    Each ``energy_uj`` file is opened once and re-read with ``os.pread`` (sysfs regenerates the
    value on every read from offset 0), which keeps a read to about a microsecond per domain.
    Thread-safe: the wrap-around state is updated under a lock.
    """

    method: str = "rapl"

    def __init__(self, root: str = POWERCAP_ROOT) -> None:
        self.root = root
        self._paths: list[str] = []
        self._max_range: list[int | None] = []
        self._last: list[int] = []
        self._fds: list[int] = []
        skipped: list[str] = []
        for domain in _package_domains(root):
            energy_path = os.path.join(domain, "energy_uj")
            try:
                raw = _read_int(energy_path)
            except (OSError, ValueError):
                skipped.append(domain)
                continue
            try:
                max_range: int | None = _read_int(
                    os.path.join(domain, "max_energy_range_uj")
                )
            except (OSError, ValueError):
                # Without the range a wrap cannot be undone exactly; _delta then treats a
                # decrease as a counter reset, which undercounts one wrap rather than inventing
                # energy.
                max_range = None
            self._paths.append(energy_path)
            self._max_range.append(max_range)
            self._last.append(raw)
            self._fds.append(-1)
        if not self._paths:
            raise ValueError(
                f"no readable RAPL package domain (intel-rapl:N/energy_uj) under {root!r}; "
                "on Linux >= 5.10 energy_uj is readable by root only"
            )
        if skipped:
            # Partial package coverage understates energy; say so rather than fail, because one
            # readable package is still a real reading.
            logger.warning(
                "RAPL domains not readable, energy excludes them: %s",
                ", ".join(skipped),
            )
        self._total_uj = 0
        self._failed: set[int] = set()
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _close_fds, self._fds)

    @classmethod
    def available(cls, root: str = POWERCAP_ROOT) -> bool:
        """True when at least one package domain's ``energy_uj`` is readable."""
        for domain in _package_domains(root):
            try:
                _read_int(os.path.join(domain, "energy_uj"))
            except (OSError, ValueError):
                continue
            return True
        return False

    @property
    def domains(self) -> tuple[str, ...]:
        """The ``energy_uj`` paths being summed."""
        return tuple(self._paths)

    def _raw(self, i: int) -> int:
        fd = self._fds[i]
        if fd < 0:
            fd = self._fds[i] = os.open(self._paths[i], os.O_RDONLY)
        try:
            return int(os.pread(fd, 32, 0))
        except OSError:
            # The file may have been replaced (or the fd invalidated); reopen once before giving up.
            self._fds[i] = -1
            try:
                os.close(fd)
            except OSError:
                pass
            fd = self._fds[i] = os.open(self._paths[i], os.O_RDONLY)
            return int(os.pread(fd, 32, 0))

    def _delta(self, i: int, new: int) -> int:
        last = self._last[i]
        if new >= last:
            return new - last
        max_range = self._max_range[i]
        if max_range is None or last > max_range:
            return new
        return max_range - last + new

    def read(self) -> float:
        with self._lock:
            for i in range(len(self._paths)):
                try:
                    new = self._raw(i)
                except (OSError, ValueError):
                    # A failing counter must not break the request being measured: count no
                    # energy for this domain now, and warn once.
                    if i not in self._failed:
                        self._failed.add(i)
                        logger.warning(
                            "cannot read RAPL counter %s", self._paths[i], exc_info=True
                        )
                    continue
                self._total_uj += self._delta(i, new)
                self._last[i] = new
            return self._total_uj / 1e6

    def close(self) -> None:
        """Close the cached file descriptors (also done when the meter is garbage collected);
        a later ``read()`` reopens them."""
        with self._lock:
            _close_fds(self._fds)


def _env_watts() -> float:
    raw = os.environ.get("TILDE_WATTS_PER_CORE", "").strip()
    if not raw:
        return DEFAULT_WATTS_PER_CORE
    try:
        return float(raw)
    except ValueError:
        raise ValueError(
            f"TILDE_WATTS_PER_CORE must be a number of watts, got {raw!r}"
        ) from None


def default_meter(
    scope: str = "thread",
    watts_per_core: float | None = None,
    root: str = POWERCAP_ROOT,
) -> EnergyMeter:
    """RAPL when readable, otherwise a :class:`CpuTimeMeter` with ``scope``.

    ``TILDE_METER=rapl|cpu|none`` forces a meter (``auto`` or unset: choose); forcing ``rapl``
    where it is unreadable is an error rather than a silent estimate. ``watts_per_core`` defaults
    to ``TILDE_WATTS_PER_CORE`` or :data:`DEFAULT_WATTS_PER_CORE`. ``scope`` only affects the
    CPU-time meter: RAPL always counts the whole package.
    """
    if scope not in ("thread", "process"):
        raise ValueError(f"scope must be 'thread' or 'process', got {scope!r}")
    choice = os.environ.get("TILDE_METER", "").strip().lower() or "auto"
    if choice not in ("auto", "rapl", "cpu", "none"):
        raise ValueError(
            f"TILDE_METER must be one of auto, rapl, cpu, none; got {choice!r}"
        )
    if choice == "none":
        meter: EnergyMeter = NullMeter()
    elif choice == "rapl" or (choice == "auto" and RaplMeter.available(root)):
        if choice == "rapl" and not RaplMeter.available(root):
            raise ValueError(
                f"TILDE_METER=rapl but no RAPL package counter is readable under {root!r} "
                "(energy_uj is root-only on Linux >= 5.10); unset TILDE_METER or use cpu"
            )
        meter = RaplMeter(root)
    else:
        watts = _env_watts() if watts_per_core is None else watts_per_core
        meter = CpuTimeMeter(watts, scope=scope)
    logger.debug("energy meter: %s", meter.method)
    return meter


# --------------------------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------------------------

Hook = Callable[[Measurement], None]


class Hooks:
    """A registry of callables that receive every :class:`Measurement`.

    Hooks run synchronously on the measuring thread, so they should be cheap (a Prometheus
    ``observe``, a queue put); a hook that raises is logged and skipped. Registration copies the
    tuple of hooks, so ``emit`` on the hot path iterates without taking a lock.
    """

    def __init__(self) -> None:
        self._hooks: tuple[Hook, ...] = ()
        self._lock = threading.Lock()

    def add(self, fn: Hook) -> Callable[[], None]:
        """Register ``fn``; returns a function that unregisters it (idempotent)."""
        if not callable(fn):
            raise TypeError(f"hook must be callable, got {fn!r}")
        with self._lock:
            self._hooks = (*self._hooks, fn)
        removed = False

        def remover() -> None:
            nonlocal removed
            if not removed:
                removed = True
                self.remove(fn)

        return remover

    def remove(self, fn: Hook) -> None:
        """Unregister one registration of ``fn``; a no-op when it is not registered."""
        with self._lock:
            hooks = list(self._hooks)
            for i, h in enumerate(hooks):
                # == rather than `is`: bound methods are recreated on each attribute access.
                if h == fn:
                    del hooks[i]
                    self._hooks = tuple(hooks)
                    return

    def clear(self) -> None:
        with self._lock:
            self._hooks = ()

    def emit(self, m: Measurement) -> None:
        """Call every hook with ``m``; a raising hook is logged and does not stop the others."""
        for fn in self._hooks:
            try:
                fn(m)
            except Exception:
                logger.exception("metering hook %r failed on stage %r", fn, m.stage)

    def __len__(self) -> int:
        return len(self._hooks)


#: The global registry every :class:`Recorder` emits to.
hooks = Hooks()


def add_hook(fn: Hook) -> Callable[[], None]:
    """Register ``fn`` on the global :data:`hooks`; returns its remover."""
    return hooks.add(fn)


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def _percentile_sorted(ordered: Sequence[float], q: float) -> float:
    n = len(ordered)
    pos = (n - 1) * (q / 100.0)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return ordered[lo] + (ordered[hi] - ordered[lo]) * frac


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between closest ranks.

    Same definition as numpy's default (``method="linear"``): position ``(n - 1) * q / 100`` in
    the sorted values, interpolated between its neighbours. Raises ``ValueError`` on no values.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be within [0, 100], got {q!r}")
    if len(values) == 0:
        raise ValueError("percentile of no values")
    return _percentile_sorted(sorted(values), q)


@dataclass(frozen=True, slots=True)
class StageSummary:
    """Aggregate of one stage's blocks.

    ``count``, ``items``, ``seconds``, ``joules``, ``mean_ms`` and ``max_ms`` cover every block
    since the last reset; ``p50_ms``/``p99_ms`` cover the recorder's percentile window (every block
    with ``keep=True``, the most recent ``window`` blocks with ``keep=False``).
    """

    stage: str
    count: int
    items: int
    seconds: float
    joules: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0.0 else 0.0

    @property
    def joules_per_item(self) -> float:
        return self.joules / self.items if self.items > 0 else 0.0

    @property
    def joules_per_call(self) -> float:
        return self.joules / self.count if self.count > 0 else 0.0


class _StageStats:
    """Mutable running totals for one stage (guarded by the recorder's lock)."""

    __slots__ = ("count", "durations", "items", "joules", "max_s", "seconds")

    def __init__(self, window: int | None) -> None:
        self.count = 0
        self.items = 0
        self.seconds = 0.0
        self.joules = 0.0
        self.max_s = 0.0
        self.durations: deque[float] = deque(maxlen=window)

    def add(self, seconds: float, joules: float, items: int) -> None:
        self.count += 1
        self.items += items
        self.seconds += seconds
        self.joules += joules
        self.max_s = max(self.max_s, seconds)
        self.durations.append(seconds)

    def summary(self, stage: str) -> StageSummary:
        ordered = sorted(self.durations)
        return StageSummary(
            stage=stage,
            count=self.count,
            items=self.items,
            seconds=self.seconds,
            joules=self.joules,
            p50_ms=_percentile_sorted(ordered, 50.0) * 1e3 if ordered else 0.0,
            p99_ms=_percentile_sorted(ordered, 99.0) * 1e3 if ordered else 0.0,
            mean_ms=self.seconds / self.count * 1e3 if self.count else 0.0,
            max_ms=self.max_s * 1e3,
        )


# --------------------------------------------------------------------------------------------
# Recorder
# --------------------------------------------------------------------------------------------


def _labels(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    # Sorted so equal label sets compare and hash equal whatever the keyword order.
    return tuple(sorted((k, str(v)) for k, v in labels.items())) if labels else ()


class _Block:
    """The context manager behind :meth:`Recorder.measure` (a class, not a generator, because
    ``contextlib.contextmanager`` costs about a microsecond more per block on the hot path).

    ``with rec.measure("score") as block: block.items = len(hits)`` sets the item count when it
    is only known inside the block.
    """

    __slots__ = ("_e0", "_labels", "_rec", "_t0", "items", "stage")

    def __init__(
        self, rec: Recorder, stage: str, items: int, labels: tuple[tuple[str, str], ...]
    ) -> None:
        self._rec = rec
        self.stage = stage
        self.items = items
        self._labels = labels
        self._e0 = 0.0
        self._t0 = 0.0

    def __enter__(self) -> Self:
        # Energy is read outside the timed span so the meter's own cost is not in `seconds`.
        self._e0 = self._rec._meter.read()
        self._t0 = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        t1 = time.perf_counter()
        e1 = self._rec._meter.read()
        labels = self._labels
        if exc_type is not None:
            # A failed block still spent the time and energy; record it, marked, so totals add up.
            labels = (*labels, ("error", exc_type.__name__))
        self._rec._add(
            self.stage, t1 - self._t0, max(0.0, e1 - self._e0), self.items, labels
        )


class Recorder:
    """Measures blocks: ``with rec.measure("score", items=n): ...``.

    Each block produces one :class:`Measurement`, appended to :attr:`measurements` when
    ``keep=True`` and emitted to the global :data:`hooks` (unless ``use_global_hooks=False``) and
    to the ``hooks`` given here. Per-stage totals are always kept. For percentiles a stage keeps
    every duration with ``keep=True``; with ``keep=False`` (long-running services) only the most
    recent ``window`` durations per stage, so memory stays bounded (~8 bytes per kept value) while
    p50/p99 describe recent traffic.

    Safe to share between threads: totals are updated under a lock, and hooks run outside it.
    """

    def __init__(
        self,
        meter: EnergyMeter | None = None,
        hooks: Hooks | None = None,
        keep: bool = True,
        *,
        window: int = DEFAULT_WINDOW,
        use_global_hooks: bool = True,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window!r}")
        self._meter: EnergyMeter = meter if meter is not None else default_meter()
        self._hooks = hooks
        self._use_global = use_global_hooks
        self.keep = keep
        self.window: int | None = None if keep else window
        self.measurements: list[Measurement] = []
        self._stages: dict[str, _StageStats] = {}
        self._lock = threading.Lock()

    @property
    def meter(self) -> EnergyMeter:
        return self._meter

    @property
    def method(self) -> str:
        """The meter's method label, e.g. ``rapl`` or ``cpu-time*15W/core(thread)``."""
        return self._meter.method

    def measure(self, stage: str, items: int = 1, **labels: str) -> _Block:
        """Context manager timing its block and attributing the meter's energy to ``stage``."""
        return _Block(self, stage, items, _labels(labels))

    def record(
        self,
        stage: str,
        seconds: float,
        joules: float = 0.0,
        items: int = 1,
        **labels: str,
    ) -> Measurement:
        """Record an externally timed span (e.g. a batch timed by another library)."""
        if not (seconds >= 0.0 and math.isfinite(seconds)):
            raise ValueError(
                f"seconds must be a finite non-negative number, got {seconds!r}"
            )
        if not (joules >= 0.0 and math.isfinite(joules)):
            raise ValueError(
                f"joules must be a finite non-negative number, got {joules!r}"
            )
        m = self._add(
            stage, float(seconds), float(joules), items, _labels(labels), force=True
        )
        assert m is not None
        return m

    def _add(
        self,
        stage: str,
        seconds: float,
        joules: float,
        items: int,
        labels: tuple[tuple[str, str], ...],
        force: bool = False,
    ) -> Measurement | None:
        extra = self._hooks
        want_global = self._use_global and len(hooks) > 0
        want_extra = extra is not None and len(extra) > 0
        # Skip building the (frozen, so comparatively slow) Measurement when nobody will see it.
        m: Measurement | None = None
        if force or self.keep or want_global or want_extra:
            m = Measurement(stage, seconds, joules, self._meter.method, items, labels)
        with self._lock:
            stats = self._stages.get(stage)
            if stats is None:
                stats = self._stages[stage] = _StageStats(self.window)
            stats.add(seconds, joules, items)
            if self.keep and m is not None:
                self.measurements.append(m)
        if m is not None:
            if want_global:
                hooks.emit(m)
            if want_extra and extra is not None:
                extra.emit(m)
        return m

    def summary(self) -> dict[str, StageSummary]:
        """Per-stage aggregates, in the order stages were first seen."""
        with self._lock:
            return {
                stage: stats.summary(stage) for stage, stats in self._stages.items()
            }

    def reset(self) -> None:
        """Drop every measurement and aggregate (the meter and hooks are kept)."""
        with self._lock:
            self.measurements = []
            self._stages = {}


def format_summary(
    summary: Mapping[str, StageSummary], method: str, per: str = "item"
) -> str:
    """Multi-line human text for CLI closing summaries, one line per stage, e.g.::

        score: 1000 calls, 1000 items, p50 0.81 ms, p99 1.90 ms, mean 0.85 ms, max 3.10 ms,
        12.300 J (cpu-time*15W/core(thread)), 0.0123 J/item

    (on one line). ``per`` names the item unit: "passage" offline, "request" for the service.
    """
    if not summary:
        return f"no measurements ({method})"
    lines = []
    for s in summary.values():
        lines.append(
            f"{s.stage}: {s.count} calls, {s.items} {per}s, "
            f"p50 {s.p50_ms:.2f} ms, p99 {s.p99_ms:.2f} ms, mean {s.mean_ms:.2f} ms, "
            f"max {s.max_ms:.2f} ms, {s.items_per_s:.1f} {per}s/s, "
            f"{s.joules:.3f} J ({method}), {s.joules_per_item:.3g} J/{per}"
        )
    return "\n".join(lines)
