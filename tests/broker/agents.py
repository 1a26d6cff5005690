"""Drive agent_script.py (a long-lived broker client of a test user) from a test, synchronously."""

from __future__ import annotations

import json
import os
import select
import subprocess
from pathlib import Path
from typing import Any

import helpers

AGENT_SCRIPT = Path(__file__).resolve().parent / "agent_script.py"
ANSWER_GUARD_S = 60.0


class Agent:
    def __init__(self, user: str, socket_path: str | os.PathLike[str]) -> None:
        self.user = user
        argv = [os.fspath(helpers.VENV_PYTHON), os.fspath(AGENT_SCRIPT), os.fspath(socket_path)]
        if user == "root":
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd="/",
                                         env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        else:
            self.proc = helpers.spawn_as(user, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.uid = 0 if user == "root" else helpers.proc_uid(self.proc.pid)
        self._buf = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _call(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            ready, _, _ = select.select([fd], [], [], ANSWER_GUARD_S)
            if not ready:
                raise AssertionError(f"agent {self.user} did not answer {cmd}")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise AssertionError(f"agent {self.user} exited ({self.proc.poll()}) on {cmd}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def open(self, conn_id: int, req: dict[str, Any]) -> None:
        self._call({"op": "open", "id": conn_id, "req": req})

    def close(self, conn_id: int) -> None:
        self._call({"op": "close", "id": conn_id})

    def state(self) -> dict[int, dict[str, Any]]:
        return {int(k): v for k, v in self._call({"op": "state"})["conns"].items()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b'{"op": "exit"}\n')
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
