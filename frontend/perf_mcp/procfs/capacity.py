"""Storage facts for the USE check: how full each real filesystem is (space
and inodes, as df and df -i) and which whole disks serve requests in parallel
(where %util near 100 is not saturation).

Pure parts (filters, formulas, the name rules) are functions of their inputs;
the two readers (filesystem_usage, disk_queues) do the I/O: /proc/self/mountinfo
and statvfs(2), and /sys/block. Nothing here needs privileges, but statvfs of a
mount point under a directory the caller cannot search fails (EACCES): that
filesystem's figures are then unknown, with the reason.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable

from ._text import Record
from .cgroup import Mount, MountInfo, parse_mountinfo

# Filesystems that are not on a block device, or are images that are always
# full by design (squashfs snaps, ISO images), or network filesystems (their
# capacity is the server's business and statvfs may hang).
PSEUDO_FS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "ramfs", "cgroup", "cgroup2", "securityfs", "debugfs",
    "tracefs", "configfs", "fusectl", "pstore", "bpf", "mqueue", "hugetlbfs", "autofs", "binfmt_misc",
    "efivarfs", "rpc_pipefs", "nsfs", "overlay", "fuse", "fuse.lxcfs", "fuse.portal", "fuse.gvfsd-fuse",
    "squashfs", "iso9660", "udf", "erofs", "cramfs", "nfs", "nfs4", "cifs", "smb3", "9p", "virtiofs", "ceph",
    "zram",
})
# Block filesystems whose mountinfo device number is anonymous (major 0).
ANON_DEV_FS = frozenset({"btrfs", "zfs", "bcachefs"})


class FsUsage(Record, frozen=True):
    """One filesystem. Percentages are df's: used / (used + available to
    unprivileged users), so the root-reserved blocks count as not available.
    inodes_* are None for filesystems without a fixed inode count (btrfs)."""

    mount_point: str
    source: str  # /dev/vda
    fs_type: str
    device: str  # "major:minor"
    size_bytes: int | None = None
    used_bytes: int | None = None
    avail_bytes: int | None = None
    used_pct: float | None = None
    inodes: int | None = None
    inodes_used: int | None = None
    inodes_used_pct: float | None = None
    error: str | None = None  # why statvfs failed (the figures are unknown)


def real_mounts(info: MountInfo) -> list[Mount]:
    """The writable block filesystems, one mount per device (a bind mount
    of the same filesystem elsewhere is skipped: the one mounting the
    filesystem's root, then the shortest mount point, is kept)."""
    chosen: dict[tuple[int, int], Mount] = {}
    for m in info.mounts:
        if m.fs_type in PSEUDO_FS or m.fs_type.startswith("fuse."):
            continue
        if m.major == 0 and m.fs_type not in ANON_DEV_FS:
            continue
        if "ro" in m.options.split(","):
            continue  # nobody can fill it
        key = (m.major, m.minor)
        best = chosen.get(key)
        if best is None or (m.root == "/", -len(m.mount_point)) > (best.root == "/", -len(best.mount_point)):
            chosen[key] = m
    return sorted(chosen.values(), key=lambda m: m.mount_point)


def usage_from_statvfs(m: Mount, st: os.statvfs_result) -> FsUsage:
    frsize = st.f_frsize or st.f_bsize
    used_blocks = max(0, st.f_blocks - st.f_bfree)
    denominator = used_blocks + st.f_bavail
    used_pct = used_blocks / denominator * 100.0 if denominator else None
    inodes = inodes_used = inodes_pct = None
    if st.f_files:
        inodes = st.f_files
        inodes_used = max(0, st.f_files - st.f_ffree)
        inodes_pct = inodes_used / st.f_files * 100.0
    return FsUsage(mount_point=m.mount_point, source=m.source, fs_type=m.fs_type, device=f"{m.major}:{m.minor}",
                   size_bytes=st.f_blocks * frsize, used_bytes=used_blocks * frsize,
                   avail_bytes=st.f_bavail * frsize, used_pct=used_pct, inodes=inodes, inodes_used=inodes_used,
                   inodes_used_pct=inodes_pct)


def filesystem_usage(mountinfo_path: str = "/proc/self/mountinfo",
                     statvfs: Callable[[str], os.statvfs_result] = os.statvfs) -> tuple[list[FsUsage], list[str]]:
    """Usage of every real filesystem, and warnings. A statvfs that fails
    gives an FsUsage with `error` and no figures (unknown, not ok)."""
    try:
        with open(mountinfo_path, "rb") as f:
            info = parse_mountinfo(f.read())
    except OSError as exc:
        return [], [f"{mountinfo_path}: {exc.strerror}: filesystem capacity unknown"]
    out: list[FsUsage] = []
    for m in real_mounts(info):
        base = FsUsage(mount_point=m.mount_point, source=m.source, fs_type=m.fs_type, device=f"{m.major}:{m.minor}")
        try:
            out.append(usage_from_statvfs(m, statvfs(m.mount_point)))
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, "EIO")
            out.append(_with_error(base, f"statvfs: {name}: {exc.strerror}"))
    return out, list(info.warnings)


def _with_error(u: FsUsage, error: str) -> FsUsage:
    return FsUsage(mount_point=u.mount_point, source=u.source, fs_type=u.fs_type, device=u.device, error=error)


# ---------------------------------------------------------------- device queues


class DiskQueue(Record, frozen=True):
    """How a whole disk takes requests. parallel: it serves several at once
    (virtio, NVMe, md/dm stacked over other devices, several hardware queues),
    so %util (time with at least one request in flight) reaching 100 says
    nothing about saturation; await and the queue size do."""

    name: str
    parallel: bool
    why: str  # "driver virtio_blk", "NVMe", "4 hardware queues", "single queue"
    driver: str | None = None
    hw_queues: int | None = None
    nr_requests: int | None = None
    rotational: bool | None = None


PARALLEL_DRIVERS = frozenset({"virtio_blk", "nvme", "xen_blkfront", "rbd", "mtip32xx", "skd"})
PARALLEL_PREFIXES = (("nvme", "NVMe"), ("vd", "virtio disk"), ("xvd", "Xen virtual disk"), ("md", "md RAID"),
                     ("dm-", "device-mapper"), ("rbd", "Ceph RBD"), ("zram", "memory-backed (zram)"),
                     ("pmem", "persistent memory"))


def parallel_by_name(name: str) -> str | None:
    """Why a device serves requests in parallel, judged from its kernel name
    alone (the fallback when sysfs cannot be read), or None."""
    for prefix, why in PARALLEL_PREFIXES:
        if name.startswith(prefix):
            return why
    return None


def judge_queue(name: str, driver: str | None, hw_queues: int | None, nr_requests: int | None,
                rotational: bool | None, stacked: bool) -> DiskQueue:
    """The verdict from what sysfs says (pure)."""
    why: str | None = None
    if driver in PARALLEL_DRIVERS:
        why = f"driver {driver}"
    elif stacked:
        why = "stacked over other devices (md/dm)"
    elif hw_queues is not None and hw_queues > 1:
        why = f"{hw_queues} hardware queues"
    elif (by_name := parallel_by_name(name)) is not None:
        why = by_name
    parallel = why is not None
    return DiskQueue(name=name, parallel=parallel, why=why or "single queue", driver=driver, hw_queues=hw_queues,
                     nr_requests=nr_requests, rotational=rotational)


def _read_int(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def disk_queues(names: Iterable[str], sys_block: str = "/sys/block") -> dict[str, DiskQueue]:
    """DiskQueue of each whole disk named (sysfs spells "/" in a name as "!")."""
    out: dict[str, DiskQueue] = {}
    for name in names:
        base = os.path.join(sys_block, name.replace("/", "!"))
        try:
            driver: str | None = os.path.basename(os.readlink(os.path.join(base, "device", "driver")))
        except OSError:
            driver = None
        try:
            hw: int | None = sum(1 for e in os.listdir(os.path.join(base, "mq")) if e.isdecimal())
        except OSError:
            hw = None
        try:
            stacked = bool(os.listdir(os.path.join(base, "slaves")))
        except OSError:
            stacked = False
        rot = _read_int(os.path.join(base, "queue", "rotational"))
        out[name] = judge_queue(name, driver, hw, _read_int(os.path.join(base, "queue", "nr_requests")),
                                None if rot is None else bool(rot), stacked)
    return out
