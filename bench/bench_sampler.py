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
- the cost of rates() over 1 s / 10 s / 60 s windows, cold and cached.

It prints figures and asserts nothing. Run: .venv/bin/python bench/bench_sampler.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import trio
from perf_mcp.procfs.sampler import Sample, Sampler, SampleView


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
