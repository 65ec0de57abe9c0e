"""Tests for tilde.metering: meters against a fake sysfs tree and fake clocks, hooks, recorder."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path

import pytest

from tilde.metering import (
    CpuTimeMeter,
    Hooks,
    Measurement,
    NullMeter,
    RaplMeter,
    Recorder,
    StageSummary,
    add_hook,
    default_meter,
    format_summary,
    percentile,
)

MAX_RANGE = 262_143_328_850  # a real max_energy_range_uj value


def _domain(
    root: Path, name: str, energy_uj: int, max_range: int | None = MAX_RANGE
) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    if max_range is not None:
        (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    (d / "name").write_text("package-" + name.split(":")[1] + "\n")
    return d


def _set(domain: Path, energy_uj: int) -> None:
    # write_text truncates in place (same inode), as a sysfs counter changes under an open fd.
    (domain / "energy_uj").write_text(f"{energy_uj}\n")


@pytest.fixture
def sysfs(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "powercap"
    pkg0 = _domain(root, "intel-rapl:0", 1_000_000)
    pkg1 = _domain(root, "intel-rapl:1", 2_000_000)
    sub = _domain(
        root, "intel-rapl:0:0", 5_000_000
    )  # core subdomain: already inside pkg0
    (sub / "name").write_text("core\n")
    return {"root": root, "pkg0": pkg0, "pkg1": pkg1, "sub": sub}


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TILDE_METER", raising=False)
    monkeypatch.delenv("TILDE_WATTS_PER_CORE", raising=False)


class StepMeter:
    """Deterministic meter: each read advances the counter by ``step`` joules."""

    method = "fake-step"

    def __init__(self, step: float = 0.5) -> None:
        self.step = step
        self.value = 0.0

    def read(self) -> float:
        self.value += self.step
        return self.value


# ---------------------------------------------------------------------------- RAPL


def test_rapl_sums_package_domains_and_ignores_subdomains(
    sysfs: dict[str, Path],
) -> None:
    meter = RaplMeter(str(sysfs["root"]))
    assert meter.method == "rapl"
    assert [Path(p).parent.name for p in meter.domains] == [
        "intel-rapl:0",
        "intel-rapl:1",
    ]
    before = meter.read()
    _set(sysfs["pkg0"], 1_000_000 + 1_250_000)
    _set(sysfs["pkg1"], 2_000_000 + 500_000)
    _set(sysfs["sub"], 99_000_000)  # must not count
    after = meter.read()
    assert after - before == pytest.approx(1.75, abs=1e-12)
    assert meter.read() == after  # unchanged counters: no energy
    meter.close()
    _set(sysfs["pkg1"], 2_000_000 + 600_000)
    assert meter.read() - after == pytest.approx(
        0.1, abs=1e-12
    )  # reopens after close()


def test_rapl_counter_wraparound(sysfs: dict[str, Path]) -> None:
    _set(sysfs["pkg0"], MAX_RANGE - 100)
    meter = RaplMeter(str(sysfs["root"]))
    before = meter.read()
    _set(sysfs["pkg0"], 50)  # wrapped: 100 µJ to the top, then 50 µJ
    after = meter.read()
    assert after - before == pytest.approx(150e-6, abs=1e-12)
    _set(sysfs["pkg0"], 1_050)
    assert meter.read() - after == pytest.approx(1_000e-6, abs=1e-12)


def test_rapl_decrease_without_max_range_counts_as_reset(tmp_path: Path) -> None:
    pkg = _domain(tmp_path, "intel-rapl:0", 5_000, max_range=None)
    meter = RaplMeter(str(tmp_path))
    before = meter.read()
    _set(pkg, 300)
    assert meter.read() - before == pytest.approx(300e-6, abs=1e-12)


def test_rapl_amd_naming(tmp_path: Path) -> None:
    pkg = _domain(tmp_path, "amd-rapl:0", 10)
    meter = RaplMeter(str(tmp_path))
    before = meter.read()
    _set(pkg, 2_000_010)
    assert meter.read() - before == pytest.approx(2.0, abs=1e-12)


def test_rapl_concurrent_reads_count_each_microjoule_once(
    sysfs: dict[str, Path],
) -> None:
    meter = RaplMeter(str(sysfs["root"]))
    start = meter.read()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            meter.read()

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for step in range(1, 51):
            _set(sysfs["pkg0"], 1_000_000 + step * 1_000)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert meter.read() - start == pytest.approx(50_000e-6, abs=1e-12)


def test_rapl_unavailable(tmp_path: Path) -> None:
    assert not RaplMeter.available(str(tmp_path / "absent"))
    assert not RaplMeter.available(str(tmp_path))  # empty
    _domain(tmp_path, "intel-rapl:0:0", 1)  # only a subdomain
    (tmp_path / "intel-rapl").mkdir()  # the control-type dir, not a domain
    assert not RaplMeter.available(str(tmp_path))
    bad = _domain(tmp_path, "intel-rapl:0", 1)
    (bad / "energy_uj").unlink()  # as when the kernel hides it from non-root users
    assert not RaplMeter.available(str(tmp_path))
    with pytest.raises(ValueError, match="no readable RAPL"):
        RaplMeter(str(tmp_path))


def test_rapl_skips_unreadable_domain(sysfs: dict[str, Path]) -> None:
    (sysfs["pkg1"] / "energy_uj").write_text("not a number\n")
    assert RaplMeter.available(str(sysfs["root"]))
    meter = RaplMeter(str(sysfs["root"]))
    assert [Path(p).parent.name for p in meter.domains] == ["intel-rapl:0"]


# ---------------------------------------------------------------------------- default_meter


@pytest.mark.usefixtures("no_env")
def test_default_meter_prefers_rapl(sysfs: dict[str, Path]) -> None:
    meter = default_meter(root=str(sysfs["root"]))
    assert isinstance(meter, RaplMeter)
    assert meter.method == "rapl"


@pytest.mark.usefixtures("no_env")
def test_default_meter_falls_back_to_cpu_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meter = default_meter(root=str(tmp_path))
    assert isinstance(meter, CpuTimeMeter)
    assert meter.method == "cpu-time*15W/core(thread)"
    meter = default_meter(scope="process", watts_per_core=7.5, root=str(tmp_path))
    assert meter.method == "cpu-time*7.5W/core(process)"
    monkeypatch.setenv("TILDE_WATTS_PER_CORE", "22")
    assert default_meter(root=str(tmp_path)).method == "cpu-time*22W/core(thread)"
    assert default_meter(watts_per_core=3, root=str(tmp_path)).method.startswith(
        "cpu-time*3W"
    )
    monkeypatch.setenv("TILDE_WATTS_PER_CORE", "lots")
    with pytest.raises(ValueError, match="TILDE_WATTS_PER_CORE"):
        default_meter(root=str(tmp_path))


@pytest.mark.usefixtures("no_env")
def test_tilde_meter_env_forces_choice(
    sysfs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readable, empty = str(sysfs["root"]), str(tmp_path / "empty")
    monkeypatch.setenv("TILDE_METER", "cpu")
    assert isinstance(default_meter(root=readable), CpuTimeMeter)
    monkeypatch.setenv("TILDE_METER", "none")
    meter = default_meter(root=readable)
    assert isinstance(meter, NullMeter)
    assert (meter.method, meter.read()) == ("none", 0.0)
    monkeypatch.setenv("TILDE_METER", "RAPL")
    assert isinstance(default_meter(root=readable), RaplMeter)
    monkeypatch.setenv("TILDE_METER", "rapl")
    with pytest.raises(ValueError, match="TILDE_METER=rapl"):
        default_meter(root=empty)
    monkeypatch.setenv("TILDE_METER", "auto")
    assert isinstance(default_meter(root=empty), CpuTimeMeter)
    monkeypatch.setenv("TILDE_METER", "gpu")
    with pytest.raises(ValueError, match="TILDE_METER"):
        default_meter(root=readable)


# ---------------------------------------------------------------------------- CPU time


def test_cpu_time_meter_grows_with_real_cpu_work() -> None:
    meter = CpuTimeMeter(watts_per_core=10.0)
    before = meter.read()
    deadline = time.perf_counter() + 0.05
    x = 0
    while meter.read() == before and time.perf_counter() < deadline:
        x += sum(range(1000))
    assert meter.read() > before


@pytest.mark.parametrize(
    ("scope", "clock"), [("thread", "thread_time"), ("process", "process_time")]
)
def test_cpu_time_meter_is_cpu_seconds_times_watts(
    scope: str, clock: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = {"now": 100.0}
    monkeypatch.setattr(time, clock, lambda: fake["now"])
    low, high = CpuTimeMeter(10.0, scope=scope), CpuTimeMeter(25.0, scope=scope)
    assert low.method == f"cpu-time*10W/core({scope})"
    l0, h0 = low.read(), high.read()
    fake["now"] += 0.25  # a quarter CPU-second
    assert low.read() - l0 == pytest.approx(2.5)
    assert high.read() - h0 == pytest.approx(6.25)


def test_cpu_time_meter_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="scope"):
        CpuTimeMeter(scope="core")
    with pytest.raises(ValueError, match="watts_per_core"):
        CpuTimeMeter(watts_per_core=0)


# ---------------------------------------------------------------------------- hooks


def test_hooks_emit_remove_and_survive_a_raising_hook(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = Hooks()
    seen: list[str] = []

    def broken(m: Measurement) -> None:
        raise RuntimeError("hook bug")

    registry.add(broken)
    remove = registry.add(lambda m: seen.append(m.stage))
    m = Measurement("score", 0.001, 0.0, "none")
    with caplog.at_level(logging.ERROR, logger="tilde.metering"):
        registry.emit(m)
    assert seen == ["score"]
    assert "hook bug" in caplog.text
    remove()
    remove()  # idempotent
    registry.remove(broken)
    registry.remove(broken)  # not registered any more: no-op
    assert len(registry) == 0
    registry.emit(m)
    assert seen == ["score"]


def test_recorder_measure_emits_to_global_and_extra_hooks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    extra = Hooks()
    from_global: list[Measurement] = []
    from_extra: list[Measurement] = []
    extra.add(from_extra.append)

    def broken(m: Measurement) -> None:
        raise ZeroDivisionError("hook bug")

    extra.add(broken)  # a raising hook must not break the measured code
    rec = Recorder(StepMeter(0.5), hooks=extra)
    remove = add_hook(from_global.append)
    try:
        with (
            caplog.at_level(logging.ERROR, logger="tilde.metering"),
            rec.measure("score", items=40, split="dev", index="msmarco") as block,
        ):
            pass
    finally:
        remove()
    assert block.items == 40
    [m] = rec.measurements
    assert from_global == [m] and from_extra == [m]
    assert (m.stage, m.items, m.method, m.joules) == ("score", 40, "fake-step", 0.5)
    assert m.labels == (("index", "msmarco"), ("split", "dev"))  # sorted, hashable
    assert m.seconds >= 0.0
    assert "ZeroDivisionError" in caplog.text
    hash(m)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.stage = "other"  # type: ignore[misc]

    with rec.measure("tokenize"):
        pass
    assert len(from_global) == 1  # the remover took the global hook out
    assert len(from_extra) == 2


def test_recorder_items_set_inside_block_and_failed_block_recorded() -> None:
    rec = Recorder(NullMeter(), use_global_hooks=False)
    assert rec.method == "none"
    with rec.measure("lookup") as block:
        block.items = 7
    with pytest.raises(KeyError), rec.measure("lookup", items=3):
        raise KeyError("missing docid")
    ok, failed = rec.measurements
    assert (ok.items, ok.labels) == (7, ())
    assert (failed.items, failed.labels) == (3, (("error", "KeyError"),))
    assert rec.summary()["lookup"].count == 2


def test_recorder_record_and_summary_statistics() -> None:
    rec = Recorder(NullMeter(), use_global_hooks=False)
    for i in range(1, 101):  # 1 ms .. 100 ms
        m = rec.record("score", i / 1000, joules=0.02, items=10, split="dev")
    assert m == Measurement("score", 0.1, 0.02, "none", 10, (("split", "dev"),))
    rec.record("request", 0.004, joules=1.0, items=1)
    summary = rec.summary()
    assert list(summary) == ["score", "request"]
    s = summary["score"]
    assert isinstance(s, StageSummary)
    assert (s.stage, s.count, s.items) == ("score", 100, 1000)
    assert s.seconds == pytest.approx(5.05)
    assert s.joules == pytest.approx(2.0)
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p99_ms == pytest.approx(99.01)  # linear: 99 + 0.01 * (100 - 99)
    assert s.mean_ms == pytest.approx(50.5)
    assert s.max_ms == pytest.approx(100.0)
    assert s.items_per_s == pytest.approx(1000 / 5.05)
    assert s.joules_per_item == pytest.approx(0.002)
    assert s.joules_per_call == pytest.approx(0.02)
    r = summary["request"]
    assert (r.p50_ms, r.p99_ms, r.max_ms) == pytest.approx((4.0, 4.0, 4.0))

    with pytest.raises(ValueError):
        rec.record("score", -1.0)
    rec.reset()
    assert rec.summary() == {} and rec.measurements == []


def test_recorder_keep_false_is_bounded() -> None:
    seen: list[Measurement] = []
    extra = Hooks()
    extra.add(seen.append)
    rec = Recorder(
        StepMeter(), hooks=extra, keep=False, window=10, use_global_hooks=False
    )
    for i in range(1000):
        with rec.measure("request"):
            pass
        rec.record("score", i / 1000)
    assert rec.measurements == []
    assert len(seen) == 2000  # hooks still see every measurement
    s = rec.summary()["score"]
    assert s.count == 1000
    assert s.mean_ms == pytest.approx(499.5)  # totals cover everything...
    assert s.max_ms == pytest.approx(999.0)
    assert s.p50_ms == pytest.approx(994.5)  # ...percentiles the last `window` values
    assert all(len(stats.durations) == 10 for stats in rec._stages.values())
    assert rec.summary()["request"].joules == pytest.approx(500.0)  # 0.5 J per block


def test_recorder_counts_are_exact_across_threads() -> None:
    rec = Recorder(NullMeter(), keep=False, use_global_hooks=False)

    def work() -> None:
        for _ in range(500):
            with rec.measure("score", items=2):
                pass

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = rec.summary()["score"]
    assert (s.count, s.items) == (2000, 4000)


# ---------------------------------------------------------------------------- statistics


def test_percentile_linear_interpolation() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 25) == pytest.approx(1.75)
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0
    assert percentile(list(range(11)), 99) == pytest.approx(9.9)
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_format_summary() -> None:
    rec = Recorder(NullMeter(), use_global_hooks=False)
    rec.record("request", 0.001, joules=0.01)
    rec.record("request", 0.003, joules=0.03)
    text = format_summary(rec.summary(), "cpu-time*15W/core(thread)", per="request")
    assert text.startswith("request: 2 calls, 2 requests, p50 2.00 ms, p99 2.98 ms")
    assert "0.040 J (cpu-time*15W/core(thread))" in text
    assert text.endswith("0.02 J/request")
    assert format_summary({}, "rapl") == "no measurements (rapl)"
