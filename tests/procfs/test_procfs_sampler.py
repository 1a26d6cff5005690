"""The background sampler under trio (pytest-trio, trio_mode): on the real
/proc, and on files in a temp dir that the test changes between ticks so the
rates have known answers."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from perf_mcp.procfs.cgroup import parse_cgroup_v1_cpu_stat
from perf_mcp.procfs.sampler import Sampler, cpu_busy_pct, read_file, trim_stat
from perf_mcp.procfs.snapshot import SYSTEM_FILES

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "procfs"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeProc:
    """A temp dir standing in for /proc: stat and diskstats written by the test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.user = self.idle = 0
        self.io_ms = self.reads = 0

    def write(self) -> None:
        (self.root / "stat").write_text(
            f"cpu  {self.user} 0 0 {self.idle} 0 0 0 0 0 0\ncpu0 {self.user} 0 0 {self.idle} 0 0 0 0 0 0\n"
            "intr 100 1 2 3 4 5\nctxt 10\nbtime 1\nprocesses 5\nprocs_running 1\nprocs_blocked 0\n"
        )
        (self.root / "diskstats").write_text(
            f"   8       0 sda {self.reads} 0 0 0 0 0 0 0 0 {self.io_ms} 0 0 0 0 0 0 0\n"
        )

    def files(self) -> dict[str, str]:
        return {"stat": str(self.root / "stat"), "diskstats": str(self.root / "diskstats")}


@pytest.fixture
def fake_proc(tmp_path: Path) -> Iterator[FakeProc]:
    proc = FakeProc(tmp_path)
    proc.write()
    yield proc


def tick_every_second(
    sampler: Sampler, clock: FakeClock, proc: FakeProc, ticks: int, busy_from: int = 10**9
) -> None:
    """Take ``ticks`` samples 1 s apart: 100 CPU ticks and 500 ms of disk
    busy time per second; CPU fully busy from sample ``busy_from`` on."""
    for i in range(ticks):
        if i:
            clock.now += 1.0
            if i >= busy_from:
                proc.user += 100
            else:
                proc.idle += 100
            proc.io_ms += 500
            proc.reads += 10
            proc.write()
        sampler.tick()


# ---------------------------------------------------------------- the real /proc


async def test_sampler_collects_real_samples_and_stays_bounded() -> None:
    sampler = Sampler(interval_s=0.02, capacity=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(sampler.run)
        assert len(sampler) == 1  # started() comes after the first sample
        sizes = []
        for _ in range(12):
            await sampler.wait_next()
            sizes.append(len(sampler))
        nursery.cancel_scope.cancel()
    assert max(sizes) == 5 and sizes[-1] == 5
    seqs = [s.seq for s in sampler.samples()]
    assert seqs == list(range(seqs[0], seqs[0] + 5)) and seqs[-1] >= 12
    times = [s.t_mono for s in sampler.samples()]
    assert times == sorted(times)
    latest = sampler.latest()
    assert latest is not None and set(latest.names()) == set(SYSTEM_FILES) - set(sampler.unavailable)
    rates = sampler.rates(1.0)
    assert rates is not None and rates.cpu is not None
    assert 99.0 < sum([rates.cpu.user, rates.cpu.nice, rates.cpu.system, rates.cpu.iowait, rates.cpu.irq,
                       rates.cpu.softirq, rates.cpu.steal, rates.cpu.guest, rates.cpu.guest_nice,
                       rates.cpu.idle]) < 101.0  # fmt: skip
    assert rates.disks and rates.interfaces and rates.tcp is not None
    stats = sampler.stats()
    assert stats.samples_held == 5 and stats.ticks >= 13 and stats.tick_us_p50 is not None


async def test_packed_samples_give_back_the_exact_bytes() -> None:
    sampler = Sampler(interval_s=1.0, capacity=3)
    first, second = sampler.tick(), sampler.tick()
    for sample in (first, second):
        vmstat = sample.file("vmstat")
        assert vmstat is not None and vmstat.startswith(b"nr_free_pages ") and vmstat.endswith(b"\n")
        assert sample.packed_bytes < sum(len(d) for d in sample.files.values()) / 3
    assert second.file("loadavg") == second.files["loadavg"]
    stat = second.file("stat")
    assert stat is not None and stat == trim_stat(stat)
    assert b"\nintr " in stat and b"\nctxt " in stat


def test_trim_stat_keeps_only_the_interrupt_total() -> None:
    assert trim_stat(b"cpu  1 2 3 4\nintr 99 1 2 3\nctxt 5\n") == b"cpu  1 2 3 4\nintr 99\nctxt 5\n"
    assert trim_stat(b"cpu  1 2 3 4\nintr 99\nctxt 5\n") == b"cpu  1 2 3 4\nintr 99\nctxt 5\n"
    assert trim_stat(b"cpu  1\n") == b"cpu  1\n"
    real = read_file("/proc/stat")
    assert trim_stat(real).count(b"\n") == real.count(b"\n")


async def test_wait_for_samples_returns_at_once_when_satisfied() -> None:
    sampler = Sampler(interval_s=60.0, capacity=4)
    sampler.tick()
    sampler.tick()
    with trio.fail_after(1):
        await sampler.wait_for_samples(2)
        await sampler.wait_for_samples(1)


# ---------------------------------------------------------------- known answers


def test_window_picks_the_closest_older_sample(fake_proc: FakeProc) -> None:
    clock = FakeClock()
    sampler = Sampler(capacity=10, files=fake_proc.files(), monotonic=clock)
    assert sampler.window(1.0) is None
    tick_every_second(sampler, clock, fake_proc, 10)  # seq 0..9 at t = 1000..1009
    pair = sampler.window(3.0)
    assert pair is not None and (pair[0].seq, pair[1].seq) == (6, 9)
    pair = sampler.window(2.4)  # 1006.6: 1007 is closer than 1006
    assert pair is not None and pair[0].seq == 7
    pair = sampler.window(2.6)
    assert pair is not None and pair[0].seq == 6
    pair = sampler.window(100.0)  # less history than asked: the oldest
    assert pair is not None and pair[0].seq == 0
    pair = sampler.window(0.0)  # never the latest paired with itself
    assert pair is not None and (pair[0].seq, pair[1].seq) == (8, 9)
    tick_every_second(sampler, clock, fake_proc, 5)  # ring of 10 now holds seq 5..14
    pair = sampler.window(100.0)
    assert pair is not None and (pair[0].seq, pair[1].seq) == (5, 14)
    assert len(sampler) == 10


def test_rates_over_windows_have_known_answers(fake_proc: FakeProc) -> None:
    clock = FakeClock()
    sampler = Sampler(capacity=20, files=fake_proc.files(), monotonic=clock)
    tick_every_second(sampler, clock, fake_proc, 15, busy_from=12)
    one = sampler.rates(1.0)
    assert one is not None and one.interval_s == 1.0
    assert one.cpu is not None and one.cpu.user == 100.0 and one.cpu.busy == 100.0
    assert one.disks["sda"].util_pct == 50.0 and one.disks["sda"].r_s == 10.0
    ten = sampler.rates(10.0)  # samples 4..14: 7 idle seconds, then 3 busy
    assert ten is not None and ten.interval_s == 10.0
    assert ten.cpu is not None and ten.cpu.user == pytest.approx(30.0) and ten.cpu.idle == pytest.approx(70.0)
    assert ten.disks["sda"].util_pct == 50.0
    sixty = sampler.rates(60.0)  # only 14 s held: the widest window there is
    assert sixty is not None and sixty.interval_s == 14.0
    assert sixty.warnings == ()  # no missing files reported: only stat and diskstats are configured


def test_since_when_a_condition_began(fake_proc: FakeProc) -> None:
    clock = FakeClock()
    sampler = Sampler(capacity=30, files=fake_proc.files(), monotonic=clock)

    def busy(a: object, b: object) -> bool:
        value = cpu_busy_pct(a, b)  # type: ignore[arg-type]
        return value is not None and value > 90.0

    tick_every_second(sampler, clock, fake_proc, 10, busy_from=6)
    since = sampler.since_when(busy)
    assert since is not None
    # busy in the intervals ending at samples 6, 7, 8, 9: it began at sample 5
    assert since.intervals == 4 and since.duration_s == 4.0 and since.start_mono == 1005.0
    assert since.at_least is False
    assert sampler.since_when(lambda a, b: not busy(a, b)) is None  # not idle now
    always = sampler.since_when(lambda a, b: True)
    assert always is not None and always.at_least is True and always.intervals == 9
    stepped = sampler.since_when(busy, step=2)
    assert stepped is not None and stepped.intervals == 2 and stepped.start_mono == 1005.0


def test_missing_and_vanishing_files(fake_proc: FakeProc, tmp_path: Path) -> None:
    clock = FakeClock()
    files = fake_proc.files() | {"psi_cpu": str(tmp_path / "no-such-file")}
    sampler = Sampler(capacity=5, files=files, monotonic=clock)
    sampler._discover()  # what run() does first
    assert "psi_cpu" in sampler.unavailable
    sampler.tick()
    (tmp_path / "diskstats").unlink()
    clock.now += 1.0
    sample = sampler.tick()
    assert "diskstats" in sample.read_errors and sample.read_errors["diskstats"].startswith("ENOENT")
    assert sample.file("diskstats") is None
    rates = sampler.rates(1.0)
    assert rates is not None and rates.disks == {}
    assert any("diskstats" in w and "ENOENT" in w for w in rates.warnings)


def test_garbled_file_costs_only_that_file(fake_proc: FakeProc) -> None:
    clock = FakeClock()
    sampler = Sampler(capacity=5, files=fake_proc.files(), monotonic=clock)
    sampler.tick()
    clock.now += 1.0
    fake_proc.write()
    (fake_proc.root / "stat").write_text("nonsense\n")
    sampler.tick()
    rates = sampler.rates(1.0)
    assert rates is not None and rates.cpu is None and "sda" in rates.disks
    assert any("/proc/stat" in w for w in rates.warnings)


# ---------------------------------------------------------------- schedule (trio mock clock)


async def test_fixed_rate_schedule_under_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    sampler = Sampler(interval_s=1.0, capacity=4, monotonic=trio.current_time)
    async with trio.open_nursery() as nursery:
        await nursery.start(sampler.run)
        await sampler.wait_for_samples(4)
        for _ in range(6):
            await sampler.wait_next()
        nursery.cancel_scope.cancel()
    times = [s.t_mono for s in sampler.samples()]
    assert len(times) == 4
    assert [round(b - a, 9) for a, b in itertools.pairwise(times)] == [1.0, 1.0, 1.0]
    assert sampler.latest() is not None and sampler.latest().seq == 9  # type: ignore[union-attr]


async def test_sampler_cannot_run_twice_and_checks_arguments() -> None:
    with pytest.raises(ValueError):
        Sampler(interval_s=0)
    with pytest.raises(ValueError):
        Sampler(capacity=1)
    sampler = Sampler(interval_s=0.05, capacity=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(sampler.run)
        with pytest.raises(RuntimeError):
            await sampler.run()
        nursery.cancel_scope.cancel()


def test_rates_for_the_standard_windows(fake_proc: FakeProc) -> None:
    clock = FakeClock()
    sampler = Sampler(capacity=100, files=fake_proc.files(), monotonic=clock)
    tick_every_second(sampler, clock, fake_proc, 70)
    by_window = sampler.rates_for()
    assert list(by_window) == [1.0, 10.0, 60.0]
    assert [r.interval_s if r else None for r in by_window.values()] == [1.0, 10.0, 60.0]
    assert sampler.watched == fake_proc.files()
    sampler.forget_parsed()
    assert sampler.rates(1.0) == by_window[1.0]


def test_extra_files_are_kept_raw(fake_proc: FakeProc, tmp_path: Path) -> None:
    cpu_stat = tmp_path / "cpu.stat"
    cpu_stat.write_bytes((FIXTURES / "cgv1_cpu.stat.throttled.txt").read_bytes())
    sampler = Sampler(capacity=3, files=fake_proc.files(), extra_files={"cg_cpu_stat": str(cpu_stat)})
    sample = sampler.tick()
    data = sample.file("cg_cpu_stat")
    assert data is not None and parse_cgroup_v1_cpu_stat(data).nr_throttled == 53
    assert set(sampler.watched) == {"stat", "diskstats", "cg_cpu_stat"}
