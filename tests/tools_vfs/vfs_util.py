"""Known-answer file system workloads for perf_vfs_latency (tests and bench).

- A FIFO in a 0755 directory: READER (`vfs-load fifo-read PATH`, run as the test
  user) opens it and reads until EOF; the test's writer thread writes one line
  every FIFO_INTERVAL_S, so each read blocks for that long.
- A loop device over a file in /var/tmp with ext4 on it, mounted in a temp dir
  and owned by the test user (`loop_fs`); torn down (umount, losetup -d, rm)
  whatever happens.
- `vfs-load fsync DIR SECONDS CHUNK_KIB`: open a file in DIR, write CHUNK_KIB,
  fsync, close, again until SECONDS; before each fsync and after it reads
  time.perf_counter and prints "F <end CLOCK_MONOTONIC ns> <fsync ns>" (its own
  measurement of each fsync), and "ops N seconds S" at the end. The file is
  reopened every round, so its path is known to the tool only from the openat
  it saw in the window.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import helpers

VFS_LOAD_PY = r'''
import os, sys, time

def fifo_read(path):
    fd = os.open(path, os.O_RDONLY)
    print("open", flush=True)
    while os.read(fd, 4096):
        pass

def fsync_loop(d, seconds, kib, pause):
    data = b"x" * (kib * 1024)
    path = os.path.join(d, "fsync-target.dat")
    end = time.monotonic() + seconds
    ops = 0
    t_start = time.monotonic()
    while time.monotonic() < end:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        t0 = time.perf_counter()
        os.fsync(fd)
        t1 = time.perf_counter()
        print("F", time.monotonic_ns(), int((t1 - t0) * 1e9), flush=True)
        os.close(fd)
        ops += 1
        if pause:
            time.sleep(pause)
    print("ops", ops, "seconds", time.monotonic() - t_start, flush=True)

if sys.argv[1] == "fifo-read":
    fifo_read(sys.argv[2])
elif sys.argv[1] == "fsync":
    fsync_loop(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]) if len(sys.argv) > 5 else 0.02)
'''

FIFO_INTERVAL_S = 0.2


def write_load(d: Path) -> Path:
    p = d / "vfs_load.py"
    p.write_text(VFS_LOAD_PY)
    p.chmod(0o644)
    return p


@dataclass
class LoopFs:
    image: Path
    device: str
    mount: Path


@contextmanager
def loop_fs(owner: helpers.UnixUser, size_mib: int = 96) -> Iterator[LoopFs]:
    """ext4 on a loop device over a file in /var/tmp, mounted in a 0755 temp dir,
    its root owned by owner."""
    image = Path(f"/var/tmp/pmcp-vfs-{os.getpid()}.img")
    mnt = helpers.make_shared_tmpdir("pmcp-vfsmnt-")
    device = None
    mounted = False
    try:
        with open(image, "wb") as f:
            f.truncate(size_mib << 20)
        device = subprocess.run(["losetup", "-f", "--show", str(image)], check=True, capture_output=True,
                                text=True).stdout.strip()
        subprocess.run(["mkfs.ext4", "-q", "-F", device], check=True, capture_output=True)
        subprocess.run(["mount", device, str(mnt)], check=True, capture_output=True)
        mounted = True
        os.chown(mnt, owner.uid, owner.gid)
        yield LoopFs(image, device, mnt)
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], capture_output=True)
        if device:
            subprocess.run(["losetup", "-d", device], capture_output=True)
        image.unlink(missing_ok=True)
        helpers.remove_tree(mnt)


class FifoWriter:
    """Writes a line into the FIFO every interval from a thread, recording when."""

    def __init__(self, path: Path, interval: float = FIFO_INTERVAL_S) -> None:
        self.path, self.interval = path, interval
        self.times: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY)
        try:
            while not self._stop.is_set():
                time.sleep(self.interval)
                os.write(fd, b"line\n")
                self.times.append(time.monotonic_ns())
        finally:
            os.close(fd)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@contextmanager
def fifo_pair(d: Path, load: Path, user: helpers.UnixUser) -> Iterator[tuple[subprocess.Popen[bytes], FifoWriter, Path]]:
    fifo = d / "slow.fifo"
    os.mkfifo(fifo, 0o666)
    os.chmod(fifo, 0o666)
    reader = helpers.spawn_as(user, ["/usr/bin/python3", str(load), "fifo-read", str(fifo)],
                              stdout=subprocess.PIPE, start_new_session=True)
    writer = FifoWriter(fifo)
    writer.start()
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == b"open"
        yield reader, writer, fifo
    finally:
        writer.stop()
        helpers.stop_process(reader)
        fifo.unlink(missing_ok=True)


def parse_fsync_lines(text: str) -> list[tuple[int, int]]:
    """[(end monotonic ns, fsync ns)] from the workload's F lines."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "F":
            out.append((int(parts[1]), int(parts[2])))
    return out
