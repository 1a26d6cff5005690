"""Benchmark: the background sampler's own cost.

Runs perf_mcp.procfs.sampler.Sampler in-process at 1 Hz for --seconds
(default 20) on the real /proc and prints:

- CPU cost: process CPU time (user + system) consumed while only the sampler
  runs, divided by the wall time, as % of one core (goal: < 0.5%);
- per-tick cost in microseconds, p50/p99: the tick itself (reads + packing,
  wall and thread CPU time), the lazy parse of every file of a sample, and
  read + parse together;
- memory held per sample (packed) against the raw bytes, and the projected
  size of a full 10-minute ring;
- the cost of rates() over 1 s / 10 s / 60 s windows, cold and cached;
- per-process attribution on vs off, side by side (procfs.attribution.ProcessTable, the
  5 s process table perf_snapshot's "processes" reads), with --procs (default 1,000) extra
  sleeping processes running: CPU % of one core of the 1 Hz sampler alone, then with the
  process table, then (as root, --broker) with the table's broker ProcessIo read at each
  tick too (a broker started here as root; its own CPU and polkitd's are printed apart).
  As root, the extra processes run as root and the measured part runs as perfmcp-denied
  (perfmcp-granted for the broker run) through setpriv, as perf-mcp runs: a user's own
  processes are few, the 1,000 are another user's. The sleepers are killed by PID.

It prints figures and asserts nothing. Run: .venv/bin/python bench/bench_sampler.py
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
from perf_mcp.procfs.attribution import ProcessTable
from perf_mcp.procfs.sampler import Sample, Sampler, SampleView

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def summary(values: list[float]) -> str:
    return f"p50 {percentile(values, 0.50):8.1f}  p99 {percentile(values, 0.99):8.1f}  max {max(values):8.1f}"


class MeasuredSampler(Sampler):
    """The real sampler, with the thread CPU time of each tick recorded."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.tick_cpu_us: list[float] = []

    def tick(self) -> Sample:
        start = time.thread_time_ns()
        sample = super().tick()
        self.tick_cpu_us.append((time.thread_time_ns() - start) / 1000)
        return sample


async def run_for(sampler: Sampler, seconds: float) -> tuple[float, float]:
    """Run the sampler for ``seconds``; return (wall s, process CPU s) from
    just after its first tick to the end."""
    async with trio.open_nursery() as nursery:
        await nursery.start(sampler.run)
        wall0, cpu0 = time.monotonic(), time.process_time()
        await trio.sleep(seconds)
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
        nursery.cancel_scope.cancel()
    return wall, cpu


def parse_costs(samples: list[Sample]) -> list[float]:
    costs = []
    for sample in samples:
        start = time.perf_counter()
        SampleView(sample).snapshot()
        costs.append((time.perf_counter() - start) * 1e6)
    return costs


def rates_costs(sampler: Sampler) -> dict[str, float]:
    costs = {}
    for window in (1.0, 10.0, 60.0):
        sampler.forget_parsed()  # cold: nothing parsed yet
        start = time.perf_counter()
        sampler.rates(window)
        costs[f"{window:g}s cold"] = (time.perf_counter() - start) * 1e6
        start = time.perf_counter()
        sampler.rates(window)
        costs[f"{window:g}s cached"] = (time.perf_counter() - start) * 1e6
    return costs


# ---------------------------------------------------------------- attribution on vs off


async def attribution_run(seconds: float, table: bool, broker_socket: str | None) -> dict[str, float]:
    """CPU % of one core of this process while the sampler (and the process table) run."""
    from perf_mcp.broker_client import BrokerClient

    sampler = Sampler(interval_s=1.0, capacity=600)
    pt = ProcessTable(broker=BrokerClient(broker_socket) if broker_socket else None,
                      use_broker=broker_socket is not None)
    tick_ms: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(sampler.run)
        if table:
            await nursery.start(pt.run)
            await trio.sleep(0.5)
        wall0, cpu0 = time.monotonic(), time.process_time()
        await trio.sleep(seconds)
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
        nursery.cancel_scope.cancel()
    if table:
        for _ in range(5):
            start = time.thread_time()
            pt.read()
            tick_ms.append((time.thread_time() - start) * 1000)
    reads = list(pt.broker_reads)
    return {"cpu_pct": cpu / wall * 100, "wall_s": wall, "procs": len(pt.readings[-1].procs) if pt.readings else 0,
            "table_ticks": pt.ticks, "read_cpu_ms": statistics.median(tick_ms) if tick_ms else 0.0,
            "broker_reads": len(reads), "broker_bytes": len(reads[-1].raw) if reads else 0,
            "granted": bool(pt.granted)}


def proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pid_of(comm: str) -> int | None:
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if Path(f"/proc/{name}/comm").read_text().strip() == comm:
                    return int(name)
            except OSError:
                pass
    return None


def inner_run(user: str | None, mode: str, seconds: float, broker_socket: str | None) -> dict[str, float]:
    argv = [sys.executable, __file__, "--inner", mode, "--attr-seconds", str(seconds)]
    if broker_socket:
        argv += ["--broker-socket", broker_socket]
    if user:
        argv = ["setpriv", f"--reuid={user}", f"--regid={pwd.getpwnam(user).pw_gid}", "--init-groups", "--", *argv]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd="/",
                         env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    return json.loads(out.stdout.strip().splitlines()[-1])


def attribution_bench(procs: int, seconds: float, with_broker: bool) -> None:
    root = os.geteuid() == 0
    user = "perfmcp-denied" if root else None
    sleepers: list[subprocess.Popen[bytes]] = []
    broker: subprocess.Popen[bytes] | None = None
    workdir = Path(tempfile.mkdtemp(prefix="pmcp-bench-"))
    try:
        started = time.monotonic()
        for _ in range(procs):
            sleepers.append(subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL, cwd="/"))
        print(f"\nper-process attribution, on vs off: {procs} extra sleeping processes started in "
              f"{time.monotonic() - started:.1f} s (as {'root' if root else 'this user'}); measured part as "
              f"{user or 'this user'}; {seconds:g} s per run")
        rows = [("sampler alone (attribution off)", inner_run(user, "off", seconds, None)),
                ("sampler + process table (on, no broker)", inner_run(user, "on", seconds, None))]
        if with_broker and root:
            os.chmod(workdir, 0o755)
            sock = workdir / "b.sock"
            broker = subprocess.Popen([str(REPO / ".venv/bin/perf-mcp-broker"), "--socket", str(sock)],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=open(workdir / "broker.log", "wb"), cwd="/")
            deadline = time.monotonic() + 15
            while not sock.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            polkitd = pid_of("polkitd")
            b0, p0, t0 = proc_cpu_s(broker.pid), proc_cpu_s(polkitd) if polkitd else 0.0, time.monotonic()
            rows.append(("sampler + process table + broker ProcessIo", inner_run("perfmcp-granted", "on", seconds,
                                                                                 str(sock))))
            wall = time.monotonic() - t0
            b1, p1 = proc_cpu_s(broker.pid), proc_cpu_s(polkitd) if polkitd else 0.0
            rows[-1][1]["broker_cpu_pct"] = (b1 - b0) / wall * 100
            rows[-1][1]["polkitd_cpu_pct"] = (p1 - p0) / wall * 100
        print(f"  {'':45s} {'CPU % of a core':>16s} {'processes':>10s} {'table ticks':>12s} {'read() CPU ms':>14s}")
        for label, r in rows:
            print(f"  {label:45s} {r['cpu_pct']:16.3f} {r['procs']:10.0f} {r['table_ticks']:12.0f} "
                  f"{r['read_cpu_ms']:14.2f}")
        off, on = rows[0][1]["cpu_pct"], rows[1][1]["cpu_pct"]
        print(f"  attribution adds {on - off:.3f}% of a core (goal: sampler + attribution < 0.5%)")
        if len(rows) > 2:
            r = rows[2][1]
            print(f"  with the broker read: granted {r['granted']}, {r['broker_reads']} reads kept, "
                  f"{r['broker_bytes']:,} B of text per read; broker {r['broker_cpu_pct']:.3f}% and polkitd "
                  f"{r['polkitd_cpu_pct']:.3f}% of a core besides")
    finally:
        for proc in sleepers:
            proc.send_signal(signal.SIGKILL)
        for proc in sleepers:
            proc.wait()
        if broker is not None:
            broker.send_signal(signal.SIGTERM)
            try:
                broker.wait(10)
            except subprocess.TimeoutExpired:
                broker.kill()
                broker.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--procs", type=int, default=1000, help="extra sleeping processes for the attribution runs")
    parser.add_argument("--attr-seconds", type=float, default=30.0, help="length of each attribution run")
    parser.add_argument("--no-broker", action="store_true", help="skip the run with the broker's ProcessIo read")
    parser.add_argument("--only-attribution", action="store_true")
    parser.add_argument("--inner", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--broker-socket", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        result = trio.run(attribution_run, args.attr_seconds, args.inner == "on", args.broker_socket)
        print(json.dumps(result))
        return
    if args.only_attribution:
        attribution_bench(args.procs, args.attr_seconds, not args.no_broker)
        return

    sampler = MeasuredSampler(interval_s=args.interval, capacity=600)
    print(f"sampler bench: {args.seconds:g} s at {1 / args.interval:g} Hz, {os.cpu_count()} CPUs, "
          f"python {sys.version.split()[0]}, kernel {os.uname().release}")  # fmt: skip
    wall, cpu = trio.run(run_for, sampler, args.seconds)
    samples = sampler.samples()
    ticks = [s.tick_us for s in samples]
    parses = parse_costs(samples)
    both = [t + p for t, p in zip(ticks, parses, strict=True)]
    stats = sampler.stats()
    raw_per_sample = statistics.mean(sum(len(d) for d in s.files.values()) for s in samples)
    packed_per_sample = statistics.mean(s.packed_bytes for s in samples)

    print(f"\nCPU cost: {cpu * 1e3:.1f} ms CPU over {wall:.2f} s wall = {cpu / wall * 100:.3f}% of one core "
          f"(goal < 0.5%)")  # fmt: skip
    unavailable = sorted(sampler.unavailable) or "none"
    print(f"ticks: {stats.ticks} ({len(sampler.watched)} files each; unavailable: {unavailable})")
    print("\nper tick, microseconds:")
    print(f"  tick wall (read + pack)   {summary(ticks)}")
    print(f"  tick thread CPU           {summary(sampler.tick_cpu_us)}")
    print(f"  parse all files (lazy)    {summary(parses)}")
    print(f"  read + parse              {summary(both)}")
    print("\nmemory:")
    print(f"  per sample: {packed_per_sample:,.0f} B packed, {raw_per_sample:,.0f} B raw "
          f"({raw_per_sample / packed_per_sample:.1f}x)")  # fmt: skip
    projected = packed_per_sample * sampler.capacity + (
        stats.bytes_held - sum(s.packed_bytes for s in samples)
    )
    print(f"  full ring of {sampler.capacity}: ~{projected / 1024:,.0f} KiB packed "
          f"(raw would be ~{raw_per_sample * sampler.capacity / 1024:,.0f} KiB)")  # fmt: skip
    print("\nrates(window) call, microseconds:")
    for name, value in rates_costs(sampler).items():
        print(f"  {name:12s} {value:9.1f}")
    attribution_bench(args.procs, args.attr_seconds, not args.no_broker)


if __name__ == "__main__":
    main()
