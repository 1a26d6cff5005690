"""A slow local resolver and a known lookup workload for perf_dns_latency (loopback only).

- the resolver (root: it binds 127.0.0.77:53): answers every A query with
  10.9.9.9 after DELAY_S (each query in its own thread, so lookups made side by
  side are not serialised), anything else with an empty NOERROR after the same
  delay;
- the client: `unshare -m` (a private mount namespace) with a resolv.conf
  naming only 127.0.0.77 bound over /etc/resolv.conf, then setpriv to the test
  user (unshare and sh exec in place, so the Popen pid is the client's pid).
  It waits for the go file, then calls getaddrinfo(AF_INET) on each NAME given,
  in order, and exits 0 if every lookup answered 10.9.9.9.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools_exec"))

import helpers  # noqa: E402

PYTHON = "/usr/bin/python3"
RESOLVER_IP = "127.0.0.77"
DELAY_S = 0.25

RESOLVER = r"""
import socket, struct, sys, threading, time
addr, delay, ready = sys.argv[1], float(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, 53))
open(ready, "w").close()
def answer(q, peer):
    time.sleep(delay)
    tid = struct.unpack(">H", q[:2])[0]
    i = 12
    while q[i]:
        i += q[i] + 1
    qtype = struct.unpack(">H", q[i + 1:i + 3])[0]
    question = q[12:i + 5]
    if qtype == 1:
        body = struct.pack(">HHHHHH", tid, 0x8180, 1, 1, 0, 0) + question
        body += b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("10.9.9.9")
    else:
        body = struct.pack(">HHHHHH", tid, 0x8180, 1, 0, 0, 0) + question
    s.sendto(body, peer)
while True:
    q, peer = s.recvfrom(512)
    threading.Thread(target=answer, args=(q, peer), daemon=True).start()
"""

CLIENT = r"""
import os, socket, sys, time
go, names = sys.argv[1], sys.argv[2:]
end = time.monotonic() + 90
while not os.path.exists(go):
    if time.monotonic() > end:
        sys.exit(3)
    time.sleep(0.01)
for name in names:
    got = socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)
    if got[0][4][0] != "10.9.9.9":
        sys.exit(4)
print("done", flush=True)
"""


def write_files(directory: Path) -> None:
    (directory / "dns_resolver.py").write_text(RESOLVER)
    (directory / "dns_client.py").write_text(CLIENT)
    (directory / "resolv.conf").write_text(f"nameserver {RESOLVER_IP}\noptions timeout:3 attempts:1\n")
    for name in ("dns_resolver.py", "dns_client.py", "resolv.conf"):
        (directory / name).chmod(0o644)


@contextmanager
def resolver(directory: Path) -> Iterator[subprocess.Popen[bytes]]:
    ready = directory / f"resolver-ready-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen([PYTHON, os.fspath(directory / "dns_resolver.py"), RESOLVER_IP, str(DELAY_S),
                             os.fspath(ready)], stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        assert helpers.wait_until(ready.exists, 20.0), "the resolver did not start"
        yield proc
    finally:
        helpers.stop_process(proc)
        ready.unlink(missing_ok=True)


@dataclass
class Lookups:
    proc: subprocess.Popen[bytes]
    go: Path
    names: list[str]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> None:
        self.go.touch()

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)


@contextmanager
def lookups(directory: Path, user: helpers.UnixUser, names: list[str]) -> Iterator[Lookups]:
    go = directory / f"go-{uuid.uuid4().hex[:10]}"
    client = helpers.as_user_argv(user, [PYTHON, os.fspath(directory / "dns_client.py"), os.fspath(go), *names])
    script = f'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
    argv = ["/usr/bin/unshare", "-m", "--propagation", "private", "/bin/sh", "-c", script, "sh",
            os.fspath(directory / "resolv.conf"), *client]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=helpers.user_env(user),
                            cwd="/")
    try:
        assert helpers.wait_until(lambda: helpers.proc_uid(proc.pid) == user.uid or proc.poll() is not None, 10.0)
        yield Lookups(proc, go, names)
    finally:
        helpers.stop_process(proc)
        go.unlink(missing_ok=True)


def new_marker() -> str:
    return f"pmcp{uuid.uuid4().hex[:10]}"
