"""The background sampler: the cheap system-wide counters at 1 Hz, kept for
the last 10 minutes, so that perf_snapshot and perf_use_check answer at once
with rates over 1 s / 10 s / 60 s and can say since when a state has held.

Invariants:
- Memory is bounded: a fixed-size ring of ``capacity`` samples, each holding
  the raw bytes of a fixed set of files (each read capped at MAX_FILE_BYTES;
  /proc/stat keeps only the total of its long per-IRQ "intr" line), packed
  losslessly per file with deflate against that file's first reading (the
  names repeat every tick): about 1 KiB per sample instead of 13 KiB here.
- A tick only reads (open/read/close per file, tens of microseconds each) and
  packs bytes; parsing is lazy, per file, when a caller asks, and the parsed
  views of the most recent few samples are cached. These are small procfs
  reads, so they run on the trio thread, not in a worker thread.
- Time is time.monotonic() per sample; rates divide by its difference.
- The schedule is fixed-rate (no drift); ticks missed while the process was
  suspended are skipped, not replayed.
"""

from __future__ import annotations

import errno
import math
import os
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import trio

from ._text import Record
from .cpu import LoadAvg, ProcStat
from .derive import SystemRates, cpu_split, system_rates
from .disk import DiskStats
from .errors import ParseError
from .memory import MemInfo, VmStat
from .net import NetDev, NetSnmp, SoftnetStat
from .pressure import Pressure
from .snapshot import PARSERS, SYSTEM_FILES, Snapshot, SnapshotLike

MAX_FILE_BYTES = 1 << 22  # 4 MiB: far above any of these files
_READ_CHUNK = 1 << 16
_VIEW_CACHE = 8  # parsed views kept (~50 KiB each; a perf_snapshot touches about 4 samples)


class _Packer:
    """Deflate per file, with that file's first reading as the preset
    dictionary: names and layout repeat every tick, so a 4 KiB vmstat packs
    to a few hundred bytes. Small files are kept as they are. Lossless."""

    MIN_PACK = 512

    def __init__(self) -> None:
        self._dicts: dict[str, bytes] = {}

    def pack(self, name: str, data: bytes) -> bytes:
        if len(data) < self.MIN_PACK:
            return b"\x00" + data
        zdict = self._dicts.setdefault(name, data)
        packer = zlib.compressobj(1, zdict=zdict)
        return b"\x01" + packer.compress(data) + packer.flush()

    def unpack(self, name: str, packed: bytes) -> bytes:
        if packed[:1] == b"\x00":
            return packed[1:]
        unpacker = zlib.decompressobj(zdict=self._dicts[name])
        return unpacker.decompress(packed[1:]) + unpacker.flush()

    def dict_bytes(self) -> int:
        return sum(len(d) for d in self._dicts.values())


class Sample:
    """One tick: when, and the bytes of each file that could be read (held
    packed; ``file()`` and ``files`` give them back exactly)."""

    __slots__ = ("_packed", "_packer", "read_errors", "seq", "t_mono", "t_wall", "tick_us")

    def __init__(
        self,
        seq: int,
        t_mono: float,
        t_wall: float,
        packed: dict[str, bytes],
        read_errors: dict[str, str],
        tick_us: float,
        packer: _Packer,
    ) -> None:
        self.seq = seq  # 0, 1, 2, ... since the sampler started
        self.t_mono = t_mono  # time.monotonic() when the tick began
        self.t_wall = t_wall  # time.time() at the same moment
        self.read_errors = read_errors  # name -> "ENOENT: ..." for files that failed this tick
        self.tick_us = tick_us  # wall time the tick took (reads and packing)
        self._packed = packed
        self._packer = packer

    def names(self) -> tuple[str, ...]:
        return tuple(self._packed)

    def file(self, name: str) -> bytes | None:
        packed = self._packed.get(name)
        return None if packed is None else self._packer.unpack(name, packed)

    @property
    def files(self) -> dict[str, bytes]:
        return {name: self._packer.unpack(name, packed) for name, packed in self._packed.items()}

    @property
    def packed_bytes(self) -> int:
        return sum(len(p) for p in self._packed.values())

    def __repr__(self) -> str:
        return f"Sample(seq={self.seq}, t_mono={self.t_mono:.3f}, files={list(self._packed)})"


class Since(Record, frozen=True):
    """How long a condition has held, counting back from the latest sample."""

    start_wall: float  # time.time() of the sample where the condition began (or the oldest)
    start_mono: float
    duration_s: float
    intervals: int  # consecutive intervals for which it held
    at_least: bool  # True: it held across the whole ring, so it began even earlier


class TickStats(Record, frozen=True):
    """The sampler's own cost (for the bench and perf_info)."""

    ticks: int
    samples_held: int
    bytes_held: int
    tick_us_p50: float | None
    tick_us_p99: float | None
    tick_us_max: float | None


def read_file(path: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """Read a whole procfs/sysfs file with open/read/close (no buffering
    layer). OSError propagates; more than ``limit`` bytes is an OSError(EFBIG)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, _READ_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise OSError(errno.EFBIG, f"more than {limit} bytes", path)
            chunks.append(chunk)
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def trim_stat(data: bytes) -> bytes:
    """/proc/stat without the per-IRQ counts of its "intr" line (only the
    total is used): hundreds of numbers on big machines, most of the file."""
    start = data.find(b"\nintr ")
    if start < 0:
        return data
    end = data.find(b"\n", start + 1)
    if end < 0:
        return data
    cut = data.find(b" ", start + 6, end)
    return data if cut < 0 else data[:cut] + data[end:]


def _error_text(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "EIO")
    return f"{name}: {exc.strerror or exc}"


class SampleView:
    """A Sample whose files are parsed on first access, each at most once.
    Satisfies snapshot.SnapshotLike, so derive.system_rates takes it as is."""

    __slots__ = ("_parsed", "_warnings", "sample")

    def __init__(self, sample: Sample) -> None:
        self.sample = sample
        self._parsed: dict[str, Any] = {}
        self._warnings: list[str] = [f"{SYSTEM_FILES.get(n, n)}: {e}" for n, e in sample.read_errors.items()]

    def _get(self, name: str) -> Any:
        if name in self._parsed:
            return self._parsed[name]
        data = self.sample.file(name)
        result = None
        if data is not None:
            try:
                result = PARSERS[name](data)
                self._warnings.extend(getattr(result, "warnings", ()))
            except ParseError as exc:
                self._warnings.append(str(exc))
        self._parsed[name] = result
        return result

    @property
    def warnings(self) -> tuple[str, ...]:
        """Read errors of the tick, and parse warnings of the files parsed so far."""
        return tuple(self._warnings)

    @property
    def t_mono(self) -> float:
        return self.sample.t_mono

    @property
    def t_wall(self) -> float:
        return self.sample.t_wall

    @property
    def stat(self) -> ProcStat | None:
        return self._get("stat")  # type: ignore[no-any-return]

    @property
    def meminfo(self) -> MemInfo | None:
        return self._get("meminfo")  # type: ignore[no-any-return]

    @property
    def vmstat(self) -> VmStat | None:
        return self._get("vmstat")  # type: ignore[no-any-return]

    @property
    def loadavg(self) -> LoadAvg | None:
        return self._get("loadavg")  # type: ignore[no-any-return]

    @property
    def diskstats(self) -> DiskStats | None:
        return self._get("diskstats")  # type: ignore[no-any-return]

    @property
    def net_dev(self) -> NetDev | None:
        return self._get("net_dev")  # type: ignore[no-any-return]

    @property
    def snmp(self) -> NetSnmp | None:
        return self._get("snmp")  # type: ignore[no-any-return]

    @property
    def netstat(self) -> NetSnmp | None:
        return self._get("netstat")  # type: ignore[no-any-return]

    @property
    def softnet(self) -> SoftnetStat | None:
        return self._get("softnet")  # type: ignore[no-any-return]

    @property
    def psi_cpu(self) -> Pressure | None:
        return self._get("psi_cpu")  # type: ignore[no-any-return]

    @property
    def psi_memory(self) -> Pressure | None:
        return self._get("psi_memory")  # type: ignore[no-any-return]

    @property
    def psi_io(self) -> Pressure | None:
        return self._get("psi_io")  # type: ignore[no-any-return]

    def snapshot(self) -> Snapshot:
        """Every file parsed, as one serialisable Struct."""
        parsed = {name: self._get(name) for name in PARSERS}
        return Snapshot(t_mono=self.t_mono, t_wall=self.t_wall, warnings=self.warnings, **parsed)


class _Ring:
    """Fixed-size ring of samples, oldest first."""

    def __init__(self, capacity: int) -> None:
        self._slots: list[Sample | None] = [None] * capacity
        self._start = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def append(self, sample: Sample) -> None:
        capacity = len(self._slots)
        if self._count < capacity:
            self._slots[(self._start + self._count) % capacity] = sample
            self._count += 1
        else:
            self._slots[self._start] = sample
            self._start = (self._start + 1) % capacity

    def __getitem__(self, index: int) -> Sample:
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(index)
        sample = self._slots[(self._start + index) % len(self._slots)]
        assert sample is not None
        return sample

    def to_list(self) -> list[Sample]:
        return [self[i] for i in range(self._count)]


class Sampler:
    """Reads the system-wide counters every ``interval_s`` into a ring of
    ``capacity`` samples. Start it in a nursery::

        sampler = Sampler()
        await nursery.start(sampler.run)   # returns once the first sample is in

    ``files`` maps a name to an absolute path (default: SYSTEM_FILES under
    ``proc_root``); ``extra_files`` adds to it (a cgroup's cpu.stat, say).
    Names outside SYSTEM_FILES are kept raw: ``sample.file(name)`` gives the
    bytes to the matching parser (cgroup.parse_cgroup_v1_cpu_stat, ...).
    A file missing at start (no PSI on this kernel, say) is left out for good
    and listed in ``unavailable``.
    """

    def __init__(
        self,
        interval_s: float = 1.0,
        capacity: int = 600,
        *,
        proc_root: str = "/proc",
        files: Mapping[str, str] | None = None,
        extra_files: Mapping[str, str] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ValueError("interval_s must be > 0")
        if capacity < 2:
            raise ValueError("capacity must be at least 2")
        self.interval_s = interval_s
        self.capacity = capacity
        if files is None:
            files = {name: os.path.join(proc_root, rel) for name, rel in SYSTEM_FILES.items()}
        self._files: dict[str, str] = {**files, **(extra_files or {})}
        self.unavailable: dict[str, str] = {}
        self._monotonic = monotonic
        self._wall = wall
        self._ring = _Ring(capacity)
        self._packer = _Packer()
        self._views: OrderedDict[int, SampleView] = OrderedDict()
        self._ticks = 0
        self._new_sample = trio.Event()
        self._started = False

    # ------------------------------------------------------------ collection

    def _discover(self) -> None:
        """Drop the files this machine does not have (ENOENT), or cannot give
        (EOPNOTSUPP: PSI compiled in but disabled at boot)."""
        for name, path in list(self._files.items()):
            try:
                read_file(path)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EOPNOTSUPP):
                    self.unavailable[name] = f"{path}: {_error_text(exc)}"
                    del self._files[name]

    def tick(self) -> Sample:
        """Take one sample now and add it to the ring (run() calls this; a
        test or a tool may call it directly too)."""
        files: dict[str, bytes] = {}
        errors: dict[str, str] = {}
        t_wall = self._wall()
        t_mono = self._monotonic()
        started = time.perf_counter()
        for name, path in self._files.items():
            try:
                data = read_file(path)
            except OSError as exc:
                errors[name] = _error_text(exc)
                continue
            files[name] = trim_stat(data) if name == "stat" else data
        packed = {name: self._packer.pack(name, data) for name, data in files.items()}
        tick_us = (time.perf_counter() - started) * 1e6
        sample = Sample(self._ticks, t_mono, t_wall, packed, errors, tick_us, self._packer)
        self._ticks += 1
        self._ring.append(sample)
        self._new_sample.set()
        self._new_sample = trio.Event()
        return sample

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample forever at interval_s. Signals started after the first
        sample. Cancellation stops it between ticks (a tick never awaits)."""
        if self._started:
            raise RuntimeError("this Sampler is already running")
        self._started = True
        try:
            self._discover()
            self.tick()
            task_status.started()
            deadline = trio.current_time()
            while True:
                deadline += self.interval_s
                now = trio.current_time()
                if deadline < now:  # suspended or starved: skip what was missed
                    deadline += math.ceil((now - deadline) / self.interval_s) * self.interval_s
                await trio.sleep_until(deadline)
                self.tick()
        finally:
            self._started = False

    # ------------------------------------------------------------ reading the ring

    def __len__(self) -> int:
        return len(self._ring)

    def samples(self) -> list[Sample]:
        """Every sample held, oldest first."""
        return self._ring.to_list()

    def latest(self) -> Sample | None:
        return self._ring[-1] if len(self._ring) else None

    async def wait_for_samples(self, n: int) -> None:
        """Return once the ring holds at least n samples (n is capped at the
        capacity). Waits for ever if the sampler is not running."""
        n = min(n, self.capacity)
        while len(self._ring) < n:
            await self._new_sample.wait()

    async def wait_next(self) -> Sample:
        """The next sample to be taken."""
        await self._new_sample.wait()
        return self._ring[-1]

    def window(self, seconds: float) -> tuple[Sample, Sample] | None:
        """(older, latest): the older sample is the one whose time is closest
        to ``seconds`` before the latest; with less history than that, the
        oldest. None with fewer than two samples."""
        count = len(self._ring)
        if count < 2:
            return None
        latest = self._ring[-1]
        target = latest.t_mono - seconds
        lo, hi = 0, count - 2  # candidates: every sample but the latest
        while lo < hi:  # first index whose time is >= target
            mid = (lo + hi) // 2
            if self._ring[mid].t_mono < target:
                lo = mid + 1
            else:
                hi = mid
        best = lo
        if lo > 0 and abs(self._ring[lo - 1].t_mono - target) <= abs(self._ring[lo].t_mono - target):
            best = lo - 1
        return self._ring[best], latest

    def view(self, sample: Sample) -> SampleView:
        """The lazily parsed view of a sample (cached for recent requests)."""
        view = self._views.get(sample.seq)
        if view is not None and view.sample is sample:
            self._views.move_to_end(sample.seq)
            return view
        view = SampleView(sample)
        self._views[sample.seq] = view
        if len(self._views) > _VIEW_CACHE:
            self._views.popitem(last=False)
        return view

    def rates(self, window_s: float) -> SystemRates | None:
        """Rates over the window closest to window_s that the ring holds
        (``interval_s`` of the result says which); None before two samples.
        Read errors and parse warnings of both samples are in ``warnings``."""
        pair = self.window(window_s)
        if pair is None:
            return None
        older, newer = self.view(pair[0]), self.view(pair[1])
        result = system_rates(older, newer)
        if result is None:
            return None
        extra = tuple(dict.fromkeys(older.warnings + newer.warnings))
        return msgspec.structs.replace(result, warnings=result.warnings + extra) if extra else result

    def rates_for(self, windows: tuple[float, ...] = (1.0, 10.0, 60.0)) -> dict[float, SystemRates | None]:
        """rates() for each window (the latest sample is parsed once for all)."""
        return {window: self.rates(window) for window in windows}

    def forget_parsed(self) -> None:
        """Drop the cached parsed views (the ring itself is kept)."""
        self._views.clear()

    @property
    def watched(self) -> dict[str, str]:
        """The files read every tick: name -> path (those missing at start
        are in ``unavailable`` instead)."""
        return dict(self._files)

    def since_when(
        self,
        holds: Callable[[SnapshotLike, SnapshotLike], bool | None],
        *,
        step: int = 1,
    ) -> Since | None:
        """Since when ``holds(older, newer)`` has been true for every pair of
        samples ``step`` apart, walking back from the latest. None if it does
        not hold for the latest pair (or there are fewer than step+1 samples).
        ``holds`` returning None (no data) ends the walk like False.

        Example, "CPU busy > 90%"::

            sampler.since_when(lambda a, b: (busy := cpu_busy_pct(a, b)) is not None and busy > 90)
        """
        if step < 1:
            raise ValueError("step must be >= 1")
        count = len(self._ring)
        newest = count - 1
        end = newest
        intervals = 0
        while end - step >= 0:
            older, newer = self._ring[end - step], self._ring[end]
            if not holds(self.view(older), self.view(newer)):
                break
            intervals += 1
            end -= step
        if intervals == 0:
            return None
        start = self._ring[end]
        return Since(
            start_wall=start.t_wall,
            start_mono=start.t_mono,
            duration_s=self._ring[newest].t_mono - start.t_mono,
            intervals=intervals,
            at_least=end - step < 0,
        )

    def stats(self) -> TickStats:
        samples = self._ring.to_list()
        costs = sorted(s.tick_us for s in samples)

        def pct(p: float) -> float | None:
            return costs[min(len(costs) - 1, int(p * len(costs)))] if costs else None

        return TickStats(
            ticks=self._ticks,
            samples_held=len(samples),
            bytes_held=sum(s.packed_bytes for s in samples) + self._packer.dict_bytes(),
            tick_us_p50=pct(0.5),
            tick_us_p99=pct(0.99),
            tick_us_max=costs[-1] if costs else None,
        )


def cpu_busy_pct(older: SnapshotLike, newer: SnapshotLike) -> float | None:
    """CPU utilisation (100 - idle - iowait) between two samples, for since_when."""
    if older.stat is None or newer.stat is None:
        return None
    split = cpu_split(older.stat.cpu, newer.stat.cpu, [])
    return None if split is None else split.busy
