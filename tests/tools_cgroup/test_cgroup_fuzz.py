"""A cgroup reading from random and mutated file contents never raises:
unparsable files become None fields and warnings."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from cg_util import PROCFS_FIXTURES
from perf_mcp.cgroup import analysis
from perf_mcp.cgroup.locate import BadCgroupPath, normalise_cgroup_path
from perf_mcp.cgroup.parse import V1_FILES, V2_FILES, parse_reading
from perf_mcp.use.thresholds import default_thresholds

V1_SEEDS = {
    "cpu.stat": (PROCFS_FIXTURES / "cgv1_cpu.stat.throttled.txt").read_bytes(),
    "memory.stat": (PROCFS_FIXTURES / "cgv1_memory.stat.txt").read_bytes(),
    "memory.oom_control": (PROCFS_FIXTURES / "cgv1_memory.oom_control.txt").read_bytes(),
    "blkio.throttle.io_service_bytes": (PROCFS_FIXTURES / "cgv1_blkio.throttle.io_service_bytes.txt").read_bytes(),
}
V2_SEEDS = {
    "cpu.stat": (PROCFS_FIXTURES / "cgv2_cpu.stat.with_controller.txt").read_bytes(),
    "memory.events": (PROCFS_FIXTURES / "cgv2_memory.events.txt").read_bytes(),
    "io.stat": (PROCFS_FIXTURES / "cgv2_io.stat.txt").read_bytes(),
    "cpu.pressure": (PROCFS_FIXTURES / "cgv2_cpu.pressure.txt").read_bytes(),
}

contents = st.one_of(st.binary(max_size=120), st.sampled_from([b"max\n", b"-1\n", b"20000 100000\n", b"0\n"]))


def mutate(seed: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    raw = bytearray(seed[: cut % (len(seed) + 1)])
    for pos, value in flips:
        if pos < len(raw):
            raw[pos] = value
    return bytes(raw)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([f for files in V1_FILES.values() for f in files]), contents, max_size=8),
       st.dictionaries(st.sampled_from(list(V2_FILES)), contents, max_size=8))
def test_random_files(v1: dict[str, bytes], v2: dict[str, bytes]) -> None:
    by_controller = {c: {f: v for f, v in v1.items() if f in files} for c, files in V1_FILES.items()}
    a = parse_reading(by_controller, v2)
    b = parse_reading({}, v2)
    for reading in (a, b):
        msgspec.json.encode(reading)
        msgspec.json.encode(analysis.analyse(reading, reading, 1.0, default_thresholds(), v1_files=True,
                                             v2_path="/x"))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 400), st.lists(st.tuples(st.integers(0, 399), st.integers(0, 255)), max_size=8))
def test_mutated_fixtures(cut: int, flips: list[tuple[int, int]]) -> None:
    v1 = {"cpu": {"cpu.stat": mutate(V1_SEEDS["cpu.stat"], cut, flips)},
          "memory": {k: mutate(v, cut, flips) for k, v in V1_SEEDS.items() if k.startswith("memory")},
          "blkio": {"blkio.throttle.io_service_bytes": mutate(V1_SEEDS["blkio.throttle.io_service_bytes"], cut, flips)}}
    v2 = {k: mutate(v, cut, flips) for k, v in V2_SEEDS.items()}
    msgspec.json.encode(parse_reading(v1, v2))


@given(st.text(max_size=200))
def test_any_client_path_is_normalised_or_refused(path: str) -> None:
    try:
        normal = normalise_cgroup_path(path)
    except BadCgroupPath:
        return
    assert normal.startswith("/") and ".." not in normal.split("/") and "\x00" not in normal
