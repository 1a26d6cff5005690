"""Run client_script.py as a test user (setpriv) and read what it saw; broker process scans.

Identity matters for authorisation and limits, and the broker takes it from the
socket only, so these clients are real processes of the test users.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

import helpers

CLIENT_SCRIPT = Path(__file__).resolve().parent / "client_script.py"
# Figures measured by the tests, printed at the end of the run (conftest.py).
FIGURES: list[str] = []


def report(title: str, **figures: object) -> None:
    """Print what a test measured, and keep it for the end-of-run summary."""
    line = f"{title}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
    print(line)
    FIGURES.append(line)


def client_argv(user: str, socket_path: str | os.PathLike[str], spec: dict[str, Any]) -> list[str]:
    argv = [os.fspath(helpers.VENV_PYTHON), os.fspath(CLIENT_SCRIPT), os.fspath(socket_path), json.dumps(spec)]
    return argv if user == "root" else helpers.as_user_argv(user, argv)


def client_env(user: str) -> dict[str, str]:
    return helpers.user_env(user) if user != "root" else {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


@dataclass
class ConnView:
    messages: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False
    sent: bool = False

    @property
    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]

    @property
    def final(self) -> dict[str, Any] | None:
        for m in reversed(self.messages):
            if m["type"] in ("result", "access", "error"):
                return m
        return None


@dataclass
class ClientRun:
    pid: int
    returncode: int | None
    conns: dict[int, ConnView]
    stderr: str
    child_pids: list[int] = field(default_factory=list)


def fold_events(lines: list[str]) -> dict[int, ConnView]:
    conns: dict[int, ConnView] = {}
    for line in lines:
        if not line.strip():
            continue
        ev = json.loads(line)
        if "i" not in ev:
            continue
        view = conns.setdefault(ev["i"], ConnView())
        if "msg" in ev:
            view.messages.append(ev["msg"])
        if ev.get("closed"):
            view.closed = True
        if ev.get("sent"):
            view.sent = True
    return conns


async def run_client(user: str, socket_path: str | os.PathLike[str], spec: dict[str, Any], timeout: float = 180.0) -> ClientRun:
    """Run the client to its end (guarded by ``timeout``) and return what it saw."""
    proc = await trio.lowlevel.open_process(
        client_argv(user, socket_path, spec),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=client_env(user),
        cwd="/",
    )
    out, err = bytearray(), bytearray()

    async def pump(stream: Any, buf: bytearray) -> None:
        async for chunk in stream:
            buf.extend(chunk)

    try:
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, proc.stdout, out)
                nursery.start_soon(pump, proc.stderr, err)
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
    lines = out.decode().splitlines()
    children = [json.loads(ln)["child_pid"] for ln in lines if ln.startswith('{"child_pid"')]
    return ClientRun(proc.pid, proc.returncode, fold_events(lines), err.decode(errors="replace"), children)


class StreamingClient:
    """A client process whose events are read as they come (to act in the middle of a job)."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._buf = b""
        self.lines: list[str] = []

    @classmethod
    async def start(cls, user: str, socket_path: str | os.PathLike[str], spec: dict[str, Any]) -> StreamingClient:
        proc = await trio.lowlevel.open_process(
            client_argv(user, socket_path, spec),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=client_env(user),
            cwd="/",
        )
        return cls(proc)

    async def wait_for_type(self, msg_type: str, timeout: float = 60.0) -> dict[str, Any]:
        """Read events until a message of ``msg_type`` (or a final one) arrives."""
        assert self.proc.stdout is not None
        with trio.fail_after(timeout):
            while True:
                while b"\n" in self._buf:
                    line, self._buf = self._buf.split(b"\n", 1)
                    self.lines.append(line.decode())
                    ev = json.loads(line)
                    msg = ev.get("msg")
                    if msg and (msg["type"] == msg_type or msg["type"] in ("result", "access", "error")):
                        return msg
                chunk = await self.proc.stdout.receive_some(65536)
                if not chunk:
                    raise AssertionError(f"client ended before a {msg_type!r} message: {self.lines}")
                self._buf += chunk

    async def finish(self, timeout: float = 180.0) -> dict[int, ConnView]:
        assert self.proc.stdout is not None
        with trio.fail_after(timeout):
            async for chunk in self.proc.stdout:
                self._buf += chunk
            await self.proc.wait()
        self.lines += [ln.decode() for ln in self._buf.split(b"\n") if ln]
        self._buf = b""
        return fold_events(self.lines)

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    async def aclose(self) -> None:
        self.kill()
        with trio.CancelScope(shield=True):
            await self.proc.wait()
            if self.proc.stdout is not None:
                await self.proc.stdout.aclose()


def broker_perf_processes(broker_pid: int) -> list[helpers.ProcStat]:
    """Processes named perf that descend from the broker."""
    pids = set(helpers.descendants(broker_pid))
    return [p for p in helpers.all_processes() if p.pid in pids and p.comm == "perf"]
