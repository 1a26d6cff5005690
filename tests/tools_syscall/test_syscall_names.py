"""The syscall and errno name tables against their sources: the kernel headers on this
machine, `syscount -l` (libbpf-tools' own names), and, for the numbers newer than the
headers, the running kernel itself (a call of that number fires syscalls:sys_enter_NAME
with __syscall_nr == number)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import msgspec
import pytest

import helpers
from perf_mcp.trace import syscall_names as sn

SYSCOUNT = "/usr/sbin/syscount"
BPFTRACE = "/usr/bin/bpftrace"
EVENTS = Path("/sys/kernel/tracing/events/syscalls")


def test_x86_64_table_is_the_header() -> None:
    if not os.path.exists(sn.X86_64_HEADER):
        pytest.skip(f"{sn.X86_64_HEADER} is not installed (linux-libc-dev)")
    header = sn.parse_unistd(Path(sn.X86_64_HEADER).read_text())
    assert len(header) > 300
    shipped = {nr: name for nr, name in sn.X86_64.items() if nr <= max(header)}
    assert shipped == header
    assert set(sn.X86_64) - set(header) == {nr for nr in sn.NEWER if nr > max(header)}


def test_x86_64_table_agrees_with_syscount() -> None:
    """Every number libbpf-tools syscount can name has the same name here."""
    if not os.access(SYSCOUNT, os.X_OK):
        pytest.skip("libbpf-tools syscount is not installed")
    out = subprocess.run([SYSCOUNT, "-l"], capture_output=True, text=True, check=True, timeout=10).stdout
    theirs = {}
    for line in out.splitlines():
        nr, _, name = line.strip().partition(": ")
        theirs[int(nr)] = name
    assert len(theirs) > 300
    mismatched = {nr: (name, sn.X86_64.get(nr)) for nr, name in theirs.items() if sn.X86_64.get(nr) != name}
    assert mismatched == {}
    only_ours = sorted(set(sn.X86_64) - set(theirs))
    assert {436, 439, 450, 462} <= set(only_ours)  # syscount prints these as "[unknown: N]"
    print(f"\nsyscount -l names {len(theirs)} syscalls, all as ours; {len(only_ours)} more only here: "
          f"{only_ours[:6]}...")


def test_aarch64_table_is_the_generic_header() -> None:
    if shutil.which("cc") is None or not os.path.exists(sn.GENERIC_HEADER):
        pytest.skip("needs cc and asm-generic/unistd.h")
    generated = sn.generate_aarch64()
    assert {nr: name for nr, name in sn.AARCH64.items() if nr not in sn.NEWER} == generated
    # well-known arm64 numbers (arch/arm64: openat 56, close 57, read 63, getppid 173, clone3 435...)
    known = {38: "renameat", 56: "openat", 57: "close", 63: "read", 64: "write", 79: "newfstatat", 80: "fstat",
             93: "exit", 94: "exit_group", 98: "futex", 163: "getrlimit", 172: "getpid", 173: "getppid",
             220: "clone", 221: "execve", 222: "mmap", 435: "clone3", 447: "memfd_secret"}
    assert {nr: sn.AARCH64[nr] for nr in known} == known
    assert not {"open", "stat", "fork", "poll"} & set(sn.AARCH64.values())  # arm64 never had these


def test_errno_table_is_the_header() -> None:
    texts = [Path(p).read_text() for p in sn.ERRNO_HEADERS if os.path.exists(p)]
    if len(texts) != 2:
        pytest.skip("asm-generic errno headers are not installed")
    assert sn.ERRNO == sn.parse_errno_headers(texts)
    assert (sn.errno_name(2), sn.errno_name(9), sn.errno_name(11), sn.errno_name(95)) == \
        ("ENOENT", "EBADF", "EAGAIN", "EOPNOTSUPP")
    assert sn.errno_name(516) == "ERESTART_RESTARTBLOCK" and sn.errno_name(4000) == "E4000"


def test_names_never_bare_numbers() -> None:
    assert sn.syscall_name(110, "x86_64") == "getppid" and sn.syscall_name(173, "aarch64") == "getppid"
    assert sn.syscall_name(9999, "x86_64") == "unknown_9999"
    assert sn.syscall_number("[unknown: 439]") == 439 and sn.syscall_number("unknown_9999") == 9999
    assert sn.syscall_number("faccessat2", "x86_64") == 439 and sn.syscall_number("nosuch", "x86_64") is None
    assert sn.table("amd64") is sn.X86_64 and sn.table("arm64") is sn.AARCH64 and sn.table("mips") == {}


CALLER_C = r"""
#include <unistd.h>
#include <sys/syscall.h>
/* every number given on the command line, with arguments no call accepts (-1, NULL):
   each fails at once (EBADF, EFAULT, EINVAL) but fires its sys_enter tracepoint */
int main(int argc, char **argv)
{
    alarm(60);
    for (int round = 0; round < 3000; round++) {
        for (int i = 1; i < argc; i++)
            syscall(atol(argv[i]), -1L, 0L, 0L, 0L, 0L, 0L);
        usleep(5000);
    }
    return 0;
}
"""


@pytest.mark.root
def test_newer_numbers_on_the_running_kernel(shared_tmp: Path) -> None:
    """Numbers past the 6.1 headers: the kernel's own syscalls:sys_enter_NAME tracepoint
    reports __syscall_nr for a call of that number."""
    if not os.access(BPFTRACE, os.X_OK) or not EVENTS.is_dir():
        pytest.skip("needs bpftrace and the syscalls tracepoints")
    present = {nr: name for nr, name in sn.NEWER.items() if (EVENTS / f"sys_enter_{name}").is_dir()}
    present.update({110: "getppid", 3: "close"})  # two from the header: the method itself is checked
    if len(present) < 4:
        pytest.skip("this kernel predates the newer syscalls")
    src = shared_tmp / "caller.c"
    src.write_text("#include <stdlib.h>\n" + CALLER_C)
    exe = shared_tmp / "pmcp-nrcaller"
    subprocess.run(["cc", "-O1", "-o", exe, src], check=True, capture_output=True)
    caller = subprocess.Popen([exe, *map(str, present)], stdin=subprocess.DEVNULL)
    try:
        probes = ",".join(f"tracepoint:syscalls:sys_enter_{name}" for name in present.values())
        script = f"{probes} /pid == {caller.pid}/ {{ @[probe, args->__syscall_nr] = count(); }} " \
                 "interval:s:1 { exit(); }"
        res = subprocess.run([BPFTRACE, "-f", "json", "-e", script], capture_output=True, timeout=60)
    finally:
        helpers.stop_process(caller)
    seen: dict[str, int] = {}
    for line in res.stdout.splitlines():
        obj = msgspec.json.decode(line) if line.strip().startswith(b"{") else None
        if obj and obj.get("type") == "map":
            for key in obj["data"]["@"]:
                probe, _, nr = key.rpartition(",")
                seen[probe.rsplit("sys_enter_", 1)[1]] = int(nr)
    assert seen == {name: nr for nr, name in present.items()}, res.stderr.decode()[-500:]
    print(f"\nthe running kernel agrees on {len(seen)} numbers: {sorted(present)}")
