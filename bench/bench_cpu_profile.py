"""perf_cpu_profile: time from the end of sampling to the answer, and perf.data -> folded stacks, per candidate.

    sudo .venv/bin/python bench/bench_cpu_profile.py [--reps 2] [--durations 10 30] [--no-mcp]
                                                     [--bpftrace-system-wide]

Both CPUs are kept busy (`stress-ng --cpu 2`) throughout. Candidates:

- old:     perf script -F comm,pid,tid,period,ip,sym,dso; perf record without -B (the builder before)
- (a):     perf script -F comm,pid,time,ip,sym,dso; perf record -N -B (shipped: jobs.CPU_PROFILE_SCRIPT_FIELDS;
           time bounds the window perf sampled, for the expected sample count and idle)
- (a)-t:   (a) without time (fold only: the fields before the time was added)
- (a)+nd:  (a) with --no-demangle (fold only: C++ names would stay mangled, not shipped)
- (b):     (a) in 2 perf script processes over --time 0%-50% / 50%-100%, side by side; perf record
           without -B (perf script --time N% needs the sample time range its build-id pass writes)
- (c):     bpftrace profile.bt, stacks counted in the kernel (the tool's first rung, process profiles)

1. Through a real MCP client (the frontend as perfmcp-granted, a real root broker per
   candidate): system-wide profiles at 999 Hz of 10 s and 30 s, time from the end of sampling
   to the answer. perf rungs: sampling ends when the broker stops perf record, duration_s after
   it started (seen by polling the broker's children every 5 ms). (c) profiles the busy process
   by pid (the rung serves process profiles only); its end of sampling is profile.bt's own
   CLOCK_MONOTONIC stamp (data.after_sampling_s). Candidates other than the shipped one run a
   broker from a temporary copy of perf_mcp_broker with jobs.py's constants changed (launched
   through a copy of the launcher, so the integrity check still applies).
   --bpftrace-system-wide adds (c) system-wide through the broker directly (the tool does not
   take that rung: it takes over a minute after 10 s on a busy host).
2. Fold: one perf.data per duration (perf record -a -g -N at 999 Hz, with the build-id pass so (b) can slice it), then each candidate's
   perf script + perf_mcp.profile.perf_script.fold against `perf script report stackcollapse`,
   alternating, --reps repetitions, medians and the ratio (reference / candidate; goal >= 2).

Prints, never asserts. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import trio  # noqa: E402

import helpers  # noqa: E402
from perf_mcp.profile.perf_script import fold, parse_folded  # noqa: E402

FIELDS_OLD = "comm,pid,tid,period,ip,sym,dso"
FIELDS_NEW = "comm,pid,time,ip,sym,dso"
FIELDS_NO_TIME = "comm,pid,ip,sym,dso"
RATE = 999

# name -> (jobs.py constant overrides, record flags dropped) for the broker copies
BROKER_VARIANTS: dict[str, dict[str, Any]] = {
    "old": {"fields": FIELDS_OLD, "slices": 1, "drop_B": True},
    "(a)": {},  # the shipped broker
    # --time percentages need the first/last sample times that perf record writes in its build-id pass (no -B)
    "(b)": {"fields": FIELDS_NEW, "slices": 2, "drop_B": True},
}
FOLD_CANDIDATES: dict[str, tuple[str, list[str], int]] = {
    "old": ("7 fields", ["-F", FIELDS_OLD], 1),
    "(a)": ("6 fields (shipped)", ["-F", FIELDS_NEW], 1),
    "(a)-t": ("5 fields (no time)", ["-F", FIELDS_NO_TIME], 1),
    "(a)+nd": ("6 fields --no-demangle", ["-F", FIELDS_NEW, "--no-demangle"], 1),
    "(b)": ("6 fields, 2 time slices", ["-F", FIELDS_NEW], 2),
}


def perf() -> str:
    return shutil.which("perf") or "/usr/bin/perf"


# ---------------------------------------------------------------- brokers


def variant_broker(name: str, spec: dict[str, Any], workdir: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """A broker from a copy of perf_mcp_broker with jobs.py's profile constants changed."""
    code = Path(tempfile.mkdtemp(prefix="pmcp-bench-broker-"))
    os.chmod(code, 0o755)
    shutil.copytree(ROOT / "broker" / "perf_mcp_broker", code / "perf_mcp_broker",
                    ignore=shutil.ignore_patterns("__pycache__"))
    jobs = code / "perf_mcp_broker" / "jobs.py"
    text = jobs.read_text()
    if spec:
        text = re.sub(r'^CPU_PROFILE_SCRIPT_FIELDS = .*$', f'CPU_PROFILE_SCRIPT_FIELDS = "{spec["fields"]}"', text,
                      flags=re.M)
        text = re.sub(r'^CPU_PROFILE_SCRIPT_SLICES = .*$', f'CPU_PROFILE_SCRIPT_SLICES = {spec["slices"]}', text,
                      flags=re.M)
        if spec["drop_B"]:
            text = text.replace('"-g", "-N", "-B",', '"-g", "-N",')
    jobs.write_text(text)
    launcher = code / "perf-mcp-broker"
    src = (ROOT / ".venv" / "bin" / "perf-mcp-broker").read_text()
    src = src.replace("IMPORT_PATH: tuple = ('/work/main/broker',", f"IMPORT_PATH: tuple = ('{code}',")
    launcher.write_text(src)
    launcher.chmod(0o755)
    for p in code.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644 if p != launcher else 0o755)
    sock = workdir / f"{name.strip('()')}.sock"
    log = open(workdir / f"{name.strip('()')}.log", "wb")
    proc = subprocess.Popen([str(launcher), "--socket", str(sock)], stdin=subprocess.DEVNULL, stdout=log,
                            stderr=log, cwd="/", start_new_session=True)
    if not helpers.wait_until(lambda: helpers.unix_socket_listening(sock) or proc.poll() is not None, 20):
        raise RuntimeError(f"broker {name} did not start")
    if proc.poll() is not None:
        raise RuntimeError(f"broker {name} exited: {(workdir / (name.strip('()') + '.log')).read_text()}")
    return proc, sock, code


class RecordWatch:
    """When the broker's perf record started (polled every 5 ms)."""

    def __init__(self, broker_pid: int) -> None:
        self.broker_pid = broker_pid
        self.started: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and self.started is None:
            for pid in helpers.descendants(self.broker_pid):
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if len(argv) > 1 and argv[0].endswith(b"perf") and argv[1] == b"record":
                    self.started = time.monotonic()
                    break
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


async def mcp_profile(sock: Path, args: dict[str, Any], broker_pid: int) -> tuple[float | None, dict[str, Any]]:
    users = helpers.lookup_test_users()
    async with helpers.mcp_client(users.granted, sock) as client:
        watch = RecordWatch(broker_pid)
        result = await client.call_tool("perf_cpu_profile", args)
        answered = time.monotonic()
        watch.stop()
    env = helpers.envelope(result)
    if result.is_error:
        raise RuntimeError(env)
    data = env["data"]
    if data["backend"] == "perf":
        after = answered - (watch.started + args["duration_s"]) if watch.started else None
    else:
        after = data["after_sampling_s"]
    return after, data


def bpftrace_system_wide(sock: Path, duration: int) -> tuple[float, int]:
    from perf_mcp.broker_client import BrokerClient
    from perf_mcp.profile.bpftrace_stacks import fold_profile_json
    from perf_mcp_protocol import Backend, CpuProfile

    async def go() -> tuple[float, int]:
        reply = await BrokerClient(str(sock)).run(
            CpuProfile(duration_s=float(duration), frequency_hz=RATE, backend=Backend.BPFTRACE), timeout_s=900)
        prof = fold_profile_json(reply.final.steps[0].stdout)
        return time.monotonic() - (prof.sampling_end_ns or 0) / 1e9, prof.folded.samples

    return trio.run(go)


# ---------------------------------------------------------------- fold


def record(path: Path, seconds: int) -> None:
    subprocess.run([perf(), "record", "-e", "cpu-clock", "-F", str(RATE), "-a", "-g", "-N", "--no-bpf-event", "-o", str(path),
                    "--", "sleep", str(seconds)], check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, cwd="/", env={"PATH": "/usr/sbin:/usr/bin", "LANG": "C"})


def candidate_fold(data: Path, args: list[str], slices: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    if slices == 1:
        spans: list[list[str]] = [[]]
    else:
        bounds = [round(100 * i / slices) for i in range(slices + 1)]
        spans = [["--time", f"{a}%-{b}%"] for a, b in zip(bounds, bounds[1:])]
    procs = [subprocess.Popen([perf(), "script", "-i", str(data), *args, *span], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for span in spans]
    outs = [p.communicate()[0] for p in procs]
    folded = fold(b"".join(outs).decode("utf-8", "replace"))
    return time.perf_counter() - t0, folded.samples


def reference_fold(data: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    out = subprocess.run([perf(), "script", "report", "stackcollapse", "-i", str(data)], check=True,
                         stdin=subprocess.DEVNULL, capture_output=True).stdout
    n = sum(parse_folded(out.decode("utf-8", "replace")).values())
    return time.perf_counter() - t0, n


# ---------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--durations", type=int, nargs="+", default=[10, 30])
    p.add_argument("--no-mcp", action="store_true", help="only the fold comparison")
    p.add_argument("--bpftrace-system-wide", action="store_true")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench_cpu_profile: needs root")
        return 0
    workdir = helpers.make_shared_tmpdir("pmcp-bench-cpu-")
    stress = subprocess.Popen(["stress-ng", "--cpu", "2", "--timeout", "3600", "--quiet"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    brokers: dict[str, tuple[subprocess.Popen[bytes], Path, Path | None]] = {}
    busy = None
    med = statistics.median
    try:
        time.sleep(0.5)
        print(f"load: stress-ng --cpu 2 on {os.cpu_count()} CPUs; loadavg {os.getloadavg()[0]:.1f}")
        if not args.no_mcp:
            shipped_dir = workdir / "shipped"
            shipped_dir.mkdir(mode=0o755)
            shipped = helpers.start_broker(shipped_dir)
            brokers["(a)"] = (shipped.proc, shipped.socket_path, None)
            for name, spec in BROKER_VARIANTS.items():
                if spec:
                    proc, sock, code = variant_broker(name, spec, workdir)
                    brokers[name] = (proc, sock, code)
            busy = helpers.start_busy(helpers.build_busy_binary(workdir), helpers.lookup_test_users().granted)
            rows: dict[str, dict[int, list[float]]] = {}
            for duration in args.durations:
                for _ in range(args.reps):
                    for name in ("old", "(a)", "(b)", "(c)"):
                        if name == "(c)":
                            proc, sock, _ = brokers["(a)"]
                            a = {"duration_s": duration, "sample_rate_hz": RATE, "pid": busy.pid}
                        else:
                            proc, sock, _ = brokers[name]
                            a = {"duration_s": duration, "sample_rate_hz": RATE}
                        try:
                            after, data = trio.run(mcp_profile, sock, a, proc.pid)
                        except RuntimeError as exc:
                            print(f"  {name:6s} {duration:3d} s: FAILED {str(exc)[:300]}", flush=True)
                            continue
                        rows.setdefault(name, {}).setdefault(duration, []).append(after or float("nan"))
                        size = len(json.dumps(data, separators=(",", ":")))
                        print(f"  {name:6s} {duration:3d} s: {data['samples']:6d} samples, backend {data['backend']}, "
                              f"answer {after:.3f} s after sampling (frontend's own figure {data['after_sampling_s']}), "
                              f"data {size} bytes of compact JSON; sampled {data['sampled_s']} s of {duration}",
                              flush=True)
            print("\nTime from the end of sampling to the answer (MCP client), median of "
                  f"{args.reps}; goal <= 1.0 s at 30 s:")
            print(f"  {'candidate':44s}" + "".join(f"{d:>10d} s" for d in args.durations))
            labels = {"old": "old: 7 fields, record without -B", "(a)": "(a) 6 fields, -N -B (shipped)",
                      "(b)": "(b) (a) + 2 time slices, record without -B", "(c)": "(c) bpftrace profile.bt (pid)"}
            for name, by_d in rows.items():
                print(f"  {labels[name]:44s}" + "".join(f"{med(by_d[d]):10.3f} s" if d in by_d else f"{'-':>12s}"
                                                        for d in args.durations))
            if args.bpftrace_system_wide:
                after, n = bpftrace_system_wide(brokers["(a)"][1], 10)
                print(f"  (c) bpftrace profile.bt system-wide 10 s (broker directly): {after:.1f} s after sampling, "
                      f"{n} samples")

        print("\nperf.data -> folded stacks, median of", args.reps, "(same file; ratio = stackcollapse / candidate):")
        for duration in args.durations:
            data = workdir / f"p{duration}.data"
            record(data, duration)
            times: dict[str, list[float]] = {k: [] for k in FOLD_CANDIDATES}
            ref: list[float] = []
            counts: dict[str, int] = {}
            for _ in range(args.reps):
                for key, (_, a, slices) in FOLD_CANDIDATES.items():
                    t, counts[key] = candidate_fold(data, a, slices)
                    times[key].append(t)
                t, counts["ref"] = reference_fold(data)
                ref.append(t)
            print(f"  {duration} s ({data.stat().st_size / 1e6:.1f} MB, {counts['ref']} samples): "
                  f"stackcollapse {med(ref) * 1000:.0f} ms")
            for key, (label, _, _) in FOLD_CANDIDATES.items():
                same = "same samples" if counts[key] == counts["ref"] else f"{counts[key]} samples: DIFFERENT"
                print(f"    {key:7s} {label:26s} {med(times[key]) * 1000:7.0f} ms  ratio {med(ref) / med(times[key]):4.2f}x"
                      f"  ({same})")
    finally:
        if busy is not None:
            busy.proc.kill()
            busy.proc.wait()
        for proc, _, code in brokers.values():
            helpers.stop_process(proc)
            if code is not None:
                shutil.rmtree(code, ignore_errors=True)
        os.killpg(stress.pid, signal.SIGTERM)
        stress.wait()
        helpers.remove_tree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
