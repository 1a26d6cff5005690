"""From a perf.data file to folded stacks: ours against `perf script report stackcollapse`.

    sudo .venv/bin/python bench/bench_fold.py [--reps 5] [--seconds 10] [--data FILE]

Records a system-wide profile (perf record -a -g at 499 Hz under `stress-ng --cpu 2`)
into a temp dir, unless --data names an existing perf.data, then times on that
same file, alternating the two, several repetitions each:

- ours: `perf script -F comm,pid,ip,sym,dso` (jobs.CPU_PROFILE_SCRIPT_FIELDS, the text the broker
  returns) decoded and folded by perf_mcp.profile.perf_script.fold, the function
  perf_cpu_profile uses; perf script and fold are also shown apart;
- reference: `perf script report stackcollapse -i FILE` (perf's Python script).

Prints the medians and the ratio (reference / ours; the goal is >= 2), checks the
two agree on the total sample count, and prints the overlap of their top stacks
(frames in brackets, which the two name differently, compared as [unknown]).
Prints, never asserts. Needs root (system-wide perf record).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from perf_mcp.profile.perf_script import fold, parse_folded
from perf_mcp_broker.jobs import CPU_PROFILE_SCRIPT_FIELDS

SCRIPT_FIELDS = CPU_PROFILE_SCRIPT_FIELDS  # the broker's perf script argv (jobs.py); the candidates: bench_cpu_profile.py
TOP = 20
_BRACKETED = re.compile(r"^\[.*\]$")


def perf() -> str:
    path = shutil.which("perf") or "/usr/bin/perf"
    return path


def record(workdir: Path, seconds: int) -> Path:
    data = workdir / "perf.data"
    stress = subprocess.Popen(
        ["stress-ng", "--cpu", "2", "--timeout", str(seconds + 10), "--quiet"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        time.sleep(0.5)
        subprocess.run(
            [
                perf(),
                "record",
                "-e",
                "cpu-clock",
                "-F",
                "499",
                "-a",
                "-g",
                "-o",
                str(data),
                "--",
                "sleep",
                str(seconds),
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    finally:
        if stress.poll() is None:
            os.killpg(stress.pid, signal.SIGTERM)  # stress-ng leads its own group (start_new_session)
        stress.wait()
    return data


def ours(data: Path) -> tuple[dict[str, int], float, float]:
    """Folded stacks, seconds in perf script, seconds in decode + fold."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [perf(), "script", "-i", str(data), "-F", SCRIPT_FIELDS],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    ).stdout
    t1 = time.perf_counter()
    stacks = fold(out.decode("utf-8", "replace")).stacks
    t2 = time.perf_counter()
    return stacks, t1 - t0, t2 - t1


def floor(data: Path) -> float:
    """perf script reading the file with no callchains or symbols: the cost both sides pay."""
    t0 = time.perf_counter()
    subprocess.run(
        [perf(), "script", "-i", str(data), "-F", "comm,tid,period"],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return time.perf_counter() - t0


def reference(data: Path) -> tuple[dict[str, int], float]:
    t0 = time.perf_counter()
    out = subprocess.run(
        [perf(), "script", "report", "stackcollapse", "-i", str(data)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    ).stdout
    stacks = parse_folded(out.decode("utf-8", "replace"))
    return stacks, time.perf_counter() - t0


def normalise(stacks: dict[str, int]) -> dict[str, int]:
    """Comparable keys: comm spaces as '_' (stackcollapse does that), bracketed frames as [unknown]."""
    out: dict[str, int] = {}
    for stack, count in stacks.items():
        comm, _, rest = stack.partition(";")
        frames = [comm.replace(" ", "_")] + [
            "[unknown]" if _BRACKETED.match(f) else f for f in rest.split(";") if rest
        ]
        key = ";".join(frames)
        out[key] = out.get(key, 0) + count
    return out


def top(stacks: dict[str, int], n: int) -> list[str]:
    return [s for s, _ in sorted(stacks.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--seconds", type=int, default=10, help="length of the recording")
    p.add_argument("--data", type=Path, help="use this perf.data instead of recording one")
    args = p.parse_args()
    if args.data is None and os.geteuid() != 0:
        print("bench_fold: needs root to record system-wide (or pass --data FILE)")
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="pmcp-bench-fold-"))
    try:
        data = args.data or record(workdir, args.seconds)
        print(
            f"perf.data: {data} ({data.stat().st_size / 1e6:.1f} MB); {args.reps} repetitions each, alternating"
        )
        ours_total, ours_script, ours_fold, ref_total, floors = [], [], [], [], []
        our_stacks: dict[str, int] = {}
        ref_stacks: dict[str, int] = {}
        for _ in range(args.reps):
            our_stacks, t_script, t_fold = ours(data)
            ours_script.append(t_script)
            ours_fold.append(t_fold)
            ours_total.append(t_script + t_fold)
            ref_stacks, t_ref = reference(data)
            ref_total.append(t_ref)
            floors.append(floor(data))
        med = statistics.median
        print(
            f"ours: perf script -F ... + fold   median {med(ours_total) * 1000:8.1f} ms  "
            f"(perf script {med(ours_script) * 1000:.1f} ms, decode + fold {med(ours_fold) * 1000:.1f} ms)"
        )
        print(f"perf script report stackcollapse  median {med(ref_total) * 1000:8.1f} ms")
        print(f"ratio reference / ours: {med(ref_total) / med(ours_total):.2f}x  (goal >= 2x)")
        print(
            f"floor: perf script -F comm,tid,period (no stacks, no symbols) median {med(floors) * 1000:.1f} ms; "
            f"above it: ours {(med(ours_total) - med(floors)) * 1000:.1f} ms, "
            f"reference {(med(ref_total) - med(floors)) * 1000:.1f} ms"
        )

        our_n, ref_n = sum(our_stacks.values()), sum(ref_stacks.values())
        print(
            f"samples: ours {our_n}, reference {ref_n} ({'same' if our_n == ref_n else 'DIFFERENT'}); "
            f"distinct stacks: ours {len(our_stacks)}, reference {len(ref_stacks)}"
        )
        a, b = normalise(our_stacks), normalise(ref_stacks)
        same_counts = sum(1 for k, v in a.items() if b.get(k) == v)
        print(
            f"after normalising names: {same_counts}/{len(a)} of our stacks have the reference's exact count"
        )
        ta, tb = top(a, TOP), top(b, TOP)
        print(f"top-{TOP} stacks in common: {len(set(ta) & set(tb))}/{TOP}")
        for stack in ta[:5]:
            print(f"  {a[stack]:6d} ours / {b.get(stack, 0):6d} ref  {stack[-110:]}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
