"""Containment of the broker's jobs, read from /proc while they run.

- perf script (which parses and demangles every sampled binary, other users'
  included) runs as the unprivileged perf-mcp-parse: all four uids and gids that
  user's, no capability (permitted, effective, ambient), no_new_privs, in its job
  directory (its cwd), which is open (0755) only while that step runs and 0700
  before; the kernel's symbols come from a copy of /proc/kallsyms the broker made.
- No job holds CAP_KILL, CAP_SETUID, CAP_SETGID or CAP_SETPCAP (the broker keeps them
  for itself, out of its bounding set); perf and the libbpf tools that work without
  CAP_SYS_ADMIN run without it, bpftrace (BTF) keeps it.

Known answers: a `dd bs=1` from /dev/zero to /dev/null spends most of its time in the
kernel, so its profile has kernel frames; every one of them is named with a symbol of
/proc/kallsyms. A busy loop's profile names its leaf function (a binary in a 0755
directory, readable by the parser)."""

from __future__ import annotations

import os
import pwd
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import helpers
from broker_wire import cmdline, job_dir_of
from perf_mcp.broker_client import BrokerClient
from perf_mcp_protocol import Backend, CpuProfile, RunqLatency
from user_clients import report

pytestmark = [pytest.mark.root, pytest.mark.slow]

CAP = {"kill": 5, "setgid": 6, "setuid": 7, "setpcap": 8, "sys_admin": 21, "perfmon": 38, "bpf": 39}
BROKER_ONLY = ("kill", "setgid", "setuid", "setpcap")


@dataclass
class Seen:
    argv: list[str]
    status: dict[str, str]
    cwd: str | None
    cwd_mode: int | None
    files: dict[str, int] = field(default_factory=dict)  # name -> mode, in its cwd
    job_dir_mode: int | None = None  # of the job directory its argv names (perf record -o)


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}


def _look(pid: int) -> Seen | None:
    try:
        argv, status = cmdline(pid), _status(pid)
        cwd = os.readlink(f"/proc/{pid}/cwd")
        mode = os.stat(cwd).st_mode & 0o7777
        files = {n: os.stat(os.path.join(cwd, n)).st_mode & 0o7777 for n in os.listdir(cwd)} if cwd != "/" else {}
        job_dir = job_dir_of(argv)
        job_dir_mode = os.stat(job_dir).st_mode & 0o7777 if job_dir else None
    except OSError:
        return None
    return Seen(argv, status, cwd, mode, files, job_dir_mode)


def caps(seen: Seen, field_name: str) -> set[str]:
    mask = int(seen.status[field_name], 16)
    return {name for name, bit in CAP.items() if mask >> bit & 1}


@contextmanager
def watching(broker_pid: int) -> Iterator[dict[tuple[int, str], Seen]]:
    """Every program run under the broker, looked at once (as soon as seen, every 2 ms).
    Keyed by pid and program: a child is seen first as a fork of the broker, then as
    what it executed."""
    seen: dict[tuple[int, str], Seen] = {}
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for pid in helpers.descendants(broker_pid):
                look = _look(pid)
                if look is not None and look.argv and (pid, " ".join(look.argv[:2])) not in seen:
                    seen[pid, " ".join(look.argv[:2])] = look
            time.sleep(0.002)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def of(seen: dict[tuple[int, str], Seen], program: str, arg1: str | None = None) -> list[Seen]:
    return [s for s in seen.values() if os.path.basename(s.argv[0]) == program and (arg1 is None or s.argv[1:2] == [arg1])]


@pytest.fixture(scope="module")
def broker(module_broker_factory) -> helpers.RunningBroker:
    return module_broker_factory()


def kallsyms_names() -> set[str]:
    with open("/proc/kallsyms") as f:
        return {line.split()[2] for line in f}


def kernel_frames(script_out: str) -> list[str]:
    """Symbols of the [kernel.kallsyms] frames of perf script's output (`ip sym+off (dso)`)."""
    out = []
    for line in script_out.splitlines():
        if line.endswith("([kernel.kallsyms])"):
            parts = line.split()
            out.append(parts[1].split("+")[0] if len(parts) >= 3 else "[unknown]")
    return out


async def test_perf_script_runs_unprivileged_in_its_job_directory(broker: helpers.RunningBroker) -> None:
    parser = pwd.getpwnam("perf-mcp-parse")
    dd = subprocess.Popen(["dd", "if=/dev/zero", "of=/dev/null", "bs=1"], stdin=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        with watching(broker.pid) as seen:
            job = await BrokerClient(str(broker.socket_path)).run(
                CpuProfile(duration_s=2, frequency_hz=499, pid=dd.pid, include_kernel=True), timeout_s=120)
    finally:
        dd.kill()
        dd.wait()
    record, script = job.final.steps
    assert record.signal == 2 and script.exit_status == 0, (record, script.stderr[-500:])
    [rec] = of(seen, "perf", "record")
    [scr] = of(seen, "perf", "script")
    job_dir = job_dir_of(rec.argv)
    frames = kernel_frames(script.stdout.decode(errors="replace"))
    known = kallsyms_names()
    named = [f for f in frames if f in known]
    report("perf script contained", uid=scr.status["Uid"], cap_eff=scr.status["CapEff"],
           cap_prm=scr.status["CapPrm"], dir_mode_in_record=oct(rec.job_dir_mode or 0), dir_mode_in_script=oct(scr.cwd_mode or 0),
           kernel_frames=len(frames), named_from_kallsyms=len(named))
    # The parser: perf-mcp-parse in every uid and gid slot, no capability, no_new_privs.
    assert scr.status["Uid"].split() == [str(parser.pw_uid)] * 4, scr.status["Uid"]
    assert scr.status["Gid"].split() == [str(parser.pw_gid)] * 4, scr.status["Gid"]
    assert scr.status["Groups"] == "", scr.status["Groups"]
    assert int(scr.status["CapEff"], 16) == int(scr.status["CapPrm"], 16) == int(scr.status["CapAmb"], 16) == 0
    assert scr.status["NoNewPrivs"] == "1"
    # In its job directory (the argv names files relative to it), open only now.
    assert scr.cwd == job_dir and scr.argv[2:6] == ["-i", "perf.data", "--kallsyms", "kallsyms"], scr.argv
    assert scr.cwd_mode == 0o755 and scr.files.get("kallsyms") == 0o644 and scr.files.get("perf.data") == 0o644, scr.files
    assert os.stat(os.path.dirname(job_dir)).st_mode & 0o777 == 0o700  # no one else gets there by path
    assert not os.path.exists(job_dir)
    # The record step ran as root, in a job directory closed to everyone else.
    assert rec.status["Uid"].split()[0] == "0" and rec.job_dir_mode == 0o700, rec
    # Kernel frames named from the handed-over kallsyms (dd's time is mostly in the kernel).
    assert len(frames) >= 100, len(frames)
    assert len(named) >= 0.99 * len(frames), sorted(set(frames) - known)[:10]


async def test_busy_loop_profile_names_its_leaf_as_the_parser(broker: helpers.RunningBroker,
                                                              busy_process: helpers.BusyProcess) -> None:
    """The parser resolves a user binary's symbols (a root-owned binary in a 0755 directory)."""
    job = await BrokerClient(str(broker.socket_path)).run(
        CpuProfile(duration_s=2, frequency_hz=499, pid=busy_process.pid, include_kernel=False), timeout_s=120)
    script = job.final.steps[-1]
    samples = [blk for blk in script.stdout.decode(errors="replace").split("\n\n") if blk.strip()]
    leaf = [s for s in samples if len(s.splitlines()) > 1 and busy_process.leaf_symbol in s.splitlines()[1]]
    report("busy loop through the parser", samples=len(samples), leaf=len(leaf))
    assert len(samples) >= 100 and len(leaf) >= 0.85 * len(samples), (len(samples), len(leaf), samples[:2])


async def test_jobs_hold_no_capability_they_do_not_need(broker: helpers.RunningBroker) -> None:
    client = BrokerClient(str(broker.socket_path))
    with watching(broker.pid) as seen:
        profile = await client.run(CpuProfile(duration_s=1, frequency_hz=99, pid=None, include_kernel=True), timeout_s=120)
        libbpf = await client.run(RunqLatency(backend=Backend.LIBBPF, duration_s=1), timeout_s=120)
        bpftrace = await client.run(RunqLatency(backend=Backend.BPFTRACE, duration_s=1), timeout_s=120)
    own = _status(broker.pid)
    [record] = of(seen, "perf", "record")
    [runqlat] = of(seen, "runqlat")
    [bt] = of(seen, "bpftrace")
    report("capabilities", broker_eff=own["CapEff"], broker_bnd=own["CapBnd"], perf_record=record.status["CapEff"],
           runqlat=runqlat.status["CapEff"], bpftrace=bt.status["CapEff"])
    # The jobs worked: perf script's samples, runqlat's and bpftrace's histograms.
    assert profile.final.steps[-1].exit_status == 0 and profile.final.steps[-1].stdout
    assert libbpf.final.steps[0].exit_status == 0 and b"usecs" in libbpf.final.steps[0].stdout, libbpf.final.steps[0]
    assert bpftrace.final.steps[0].exit_status == 0 and b"@usecs" in bpftrace.final.steps[0].stdout, bpftrace.final.steps[0]
    # The broker keeps what it needs to run the parser, outside its bounding set.
    broker_caps = {name for name, bit in CAP.items() if int(own["CapEff"], 16) >> bit & 1}
    bounding = {name for name, bit in CAP.items() if int(own["CapBnd"], 16) >> bit & 1}
    assert set(BROKER_ONLY) <= broker_caps and not set(BROKER_ONLY) & bounding, (broker_caps, bounding)
    for job in (record, runqlat, bt):
        held = caps(job, "CapEff") | caps(job, "CapPrm") | caps(job, "CapBnd")
        assert not held & set(BROKER_ONLY), (job.argv[0], held)
        assert {"perfmon", "bpf"} <= caps(job, "CapEff"), (job.argv[0], caps(job, "CapEff"))
    # CAP_SYS_ADMIN only where it is needed (the kernel has CAP_PERFMON and CAP_BPF here).
    assert "sys_admin" not in caps(record, "CapBnd") and "sys_admin" not in caps(runqlat, "CapBnd")
    assert "sys_admin" in caps(bt, "CapEff")


def test_without_the_parser_user_perf_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """perf script never runs as root: a broker on a host without perf-mcp-parse (or with
    one of uid 0) treats perf as missing, so perf's rungs are skipped, not run as root."""
    import perf_mcp_broker.__main__ as main
    from perf_mcp_broker import runner

    before = runner.PARSER_IDS
    try:
        monkeypatch.setattr(main, "PARSER_USER", "perf-mcp-no-such-user")
        broker = main.make_broker(output_cap=1 << 20)
        assert "perf" not in broker.programs and "perf" in broker.missing and runner.PARSER_IDS is None
        monkeypatch.setattr(main, "PARSER_USER", "root")
        broker = main.make_broker(output_cap=1 << 20)
        assert "perf" not in broker.programs and runner.PARSER_IDS is None
        monkeypatch.setattr(main, "PARSER_USER", "perf-mcp-parse")
        broker = main.make_broker(output_cap=1 << 20)
        assert "perf" in broker.programs and runner.PARSER_IDS == (pwd.getpwnam("perf-mcp-parse").pw_uid,
                                                                   pwd.getpwnam("perf-mcp-parse").pw_gid)
    finally:
        runner.PARSER_IDS = before


def test_vdso_copies_of_killed_perf_script_steps_are_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """perf unpacks a sampled vdso to /tmp/perf-vdso.so-XXXXXX and removes it when it exits, but
    not when it is killed (a cancelled perf script step). The broker removes such files of
    perf-mcp-parse once unchanged for runner.STALE_S, at start and after each perf script step,
    and nothing else: not a fresh one (a live step's), not root's, not a link, not another name."""
    import perf_mcp_broker.__main__ as main
    from perf_mcp_broker import runner

    parse = pwd.getpwnam("perf-mcp-parse")
    old = time.time() - runner.STALE_S - 60
    os.chmod(tmp_path, 0o1777)
    precious = tmp_path / "precious"
    precious.write_bytes(b"root's")

    def plant(name: str, uid: int, stale: bool = True, link: bool = False) -> None:
        path = tmp_path / name
        if link:
            os.symlink(precious, path)
        else:
            path.write_bytes(b"\x7fELF")
        os.lchown(path, uid, uid)
        if stale:
            os.utime(path, (old, old), follow_symlinks=False)

    plant("perf-vdso.so-Stale1", parse.pw_uid)
    plant("perf-vdso.so-Fresh1", parse.pw_uid, stale=False)
    plant("perf-vdso.so-Roots1", 0)
    plant("perf-vdso.so-Link01", parse.pw_uid, link=True)
    plant("perf-vdsoXso-Other1", parse.pw_uid)
    before = runner.PARSER_IDS
    try:
        runner.PARSER_IDS = None  # no parser user: nothing of its to sweep
        assert runner.sweep_parser_leftovers(str(tmp_path)) == 0
        runner.PARSER_IDS = (parse.pw_uid, parse.pw_gid)
        assert runner.sweep_parser_leftovers(str(tmp_path)) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "perf-vdso.so-Fresh1", "perf-vdso.so-Link01", "perf-vdso.so-Roots1", "perf-vdsoXso-Other1", "precious"]
        assert precious.read_bytes() == b"root's"

        # at start: a stale copy in the real /tmp is gone once a broker is made
        real = f"/tmp/perf-vdso.so-T{os.getpid()}"
        with open(real, "xb") as f:
            f.write(b"\x7fELF")
        os.chown(real, parse.pw_uid, parse.pw_gid)
        os.utime(real, (old, old))
        monkeypatch.setattr(main, "PARSER_USER", "perf-mcp-parse")
        main.make_broker(output_cap=1 << 20)
        assert not os.path.lexists(real)
    finally:
        runner.PARSER_IDS = before
