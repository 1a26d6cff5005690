"""Known-answer TCP workloads for the perf_tcp_trace tests (loopback only).

- the server (Python, run as a test user via setpriv, so its pid is the
  process's own): listens on 127.0.0.1, an ephemeral port, prints the port, then accepts N connections one by one: reads exactly CS bytes, replies
  SS bytes, waits for the client's FIN and closes.
- the client (another process of the same user): waits for the go file, then N
  times: connect, send CS bytes, read SS bytes, close. The client closes first,
  so each side closes its socket in its own process (tcplife names the
  process at connect() or at the close after the peer's FIN).
- the retransmit sender (root, inside the sender namespace of
  tools_net/net_util.ns_pair): connects to a sink in the receiver namespace and
  sends for SECONDS; the sink reads and discards.

The trace is started first; the test waits until the broker's tracer has
attached (bpftool perf list) and only then creates the go file.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools_exec"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools_net"))

import helpers  # noqa: E402
from exec_util import attached_tracepoints, wait_attached  # noqa: E402,F401  (re-exported)

PYTHON = "/usr/bin/python3"
MAX_WAIT_S = 90

SERVER = r"""
import os, socket, sys, time
portfile, n, cs, ss = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(64)
print(srv.getsockname()[1], flush=True)
srv.settimeout(float(sys.argv[5]))
for _ in range(n):
    c, _ = srv.accept()
    got = 0
    while got < cs:
        b = c.recv(65536)
        if not b:
            sys.exit(3)
        got += len(b)
    c.sendall(b"s" * ss)
    if c.recv(1) != b"":
        sys.exit(4)
    c.close()
print("served", flush=True)
"""

CLIENT = r"""
import os, socket, sys, time
go, port, n, cs, ss = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
end = time.monotonic() + float(sys.argv[6])
while not os.path.exists(go):
    if time.monotonic() > end:
        sys.exit(3)
    time.sleep(0.01)
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"c" * cs)
    got = 0
    while got < ss:
        b = s.recv(65536)
        if not b:
            sys.exit(4)
        got += len(b)
    s.close()
print("done", flush=True)
"""

SINK = r"""
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
open(sys.argv[3], "w").close()
while True:
    c, _ = s.accept()
    while c.recv(1 << 16):
        pass
    c.close()
"""

SENDER = r"""
import os, socket, sys, time
go, host, port, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
end = time.monotonic() + 90
while not os.path.exists(go):
    if time.monotonic() > end:
        sys.exit(3)
    time.sleep(0.01)
s = socket.create_connection((host, port))
buf = b"r" * 65536
stop = time.monotonic() + seconds
sent = 0
while time.monotonic() < stop:
    s.sendall(buf)
    sent += len(buf)
s.shutdown(socket.SHUT_WR)
s.recv(1)
s.close()
print(sent, flush=True)
"""


def write_scripts(directory: Path) -> None:
    for name, body in (("tcp_server.py", SERVER), ("tcp_client.py", CLIENT), ("tcp_sink.py", SINK),
                       ("tcp_sender.py", SENDER)):
        (directory / name).write_text(body)
        (directory / name).chmod(0o644)


@dataclass
class Loopback:
    server: subprocess.Popen[bytes]
    client: subprocess.Popen[bytes]
    port: int
    go: Path
    n: int
    cs: int
    ss: int

    def start(self) -> None:
        self.go.touch()

    def wait(self, timeout: float = 60.0) -> None:
        assert self.client.wait(timeout) == 0, "client failed"
        assert self.server.wait(timeout) == 0, "server failed"


@contextmanager
def loopback(directory: Path, user: helpers.UnixUser, *, n: int, cs: int, ss: int) -> Iterator[Loopback]:
    go = directory / f"go-{uuid.uuid4().hex[:10]}"
    server = helpers.spawn_as(user, [PYTHON, os.fspath(directory / "tcp_server.py"), "-", str(n),
                                     str(cs), str(ss), str(MAX_WAIT_S)], stdout=subprocess.PIPE)
    client: subprocess.Popen[bytes] | None = None
    try:
        assert server.stdout is not None
        ready, _, _ = select.select([server.stdout], [], [], 20.0)
        assert ready, "server did not listen"
        port = int(server.stdout.readline())
        client = helpers.spawn_as(user, [PYTHON, os.fspath(directory / "tcp_client.py"), os.fspath(go), str(port),
                                         str(n), str(cs), str(ss), str(MAX_WAIT_S)], stdout=subprocess.DEVNULL)
        yield Loopback(server, client, port, go, n, cs, ss)
    finally:
        for proc in (client, server):
            if proc is not None:
                helpers.stop_process(proc)
        if server.stdout:
            server.stdout.close()
        go.unlink(missing_ok=True)


# Tracepoints each rung's tracer attaches; the trace is ready when all are attached.
TCPLIFE_TRACEPOINTS = frozenset({"inet_sock_set_state"})
BPFTRACE_LIFE_TRACEPOINTS = frozenset({"inet_sock_set_state", "sys_exit_accept4"})
BPFTRACE_CONN_TRACEPOINTS = frozenset({"inet_sock_set_state", "sys_exit_accept4", "tcp_retransmit_skb"})
