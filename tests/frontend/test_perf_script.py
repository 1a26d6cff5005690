"""perf script folding: real captured outputs, damaged copies, and generated text."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perf_mcp.profile.perf_script import fold, folded_text, parse_folded, parse_frame_line, parse_header

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "perf_script"

# Sample counts perf record printed when each fixture was captured (see README.md there).
RECORDED_SAMPLES = {
    "pid_c_framepointers": 190,
    "pid_dash": 132,
    "pid_python": 245,
    "system_wide_busy": 594,
    "system_wide_user_only": 391,
    "system_wide_idle": 366,
}


def load(name: str) -> str:
    return (FIXTURES / f"{name}.txt").read_text()


def _as_stackcollapse(stacks: dict[str, int]) -> dict[str, int]:
    """perf's stackcollapse writes [unknown] where we write [dso]; map ours to compare."""
    out: dict[str, int] = {}
    for stack, n in stacks.items():
        frames = stack.split(";")
        frames[1:] = ["[unknown]" if f.startswith("[") and f.endswith("]") else f for f in frames[1:]]
        key = ";".join(frames)
        out[key] = out.get(key, 0) + n
    return out


@pytest.mark.parametrize("name", sorted(RECORDED_SAMPLES))
def test_fixture_sample_count_matches_perf_record(name: str) -> None:
    folded = fold(load(name))
    assert folded.samples == RECORDED_SAMPLES[name]
    assert sum(folded.stacks.values()) == folded.samples
    assert folded.bad_lines == 0
    assert not folded.dropped_partial_sample


@pytest.mark.parametrize("name", sorted(RECORDED_SAMPLES))
def test_folding_agrees_with_perf_stackcollapse(name: str) -> None:
    ours = fold(load(name)).stacks
    reference = parse_folded((FIXTURES / f"{name}.stackcollapse").read_text())
    assert _as_stackcollapse(ours) == reference


def test_stacks_are_root_first_leaf_last() -> None:
    folded = fold(load("pid_c_framepointers"))
    for stack in folded.stacks:
        frames = stack.split(";")
        assert frames[0] == "hot"
        assert frames[1:3] == ["__libc_start_call_main", "main"], stack
    # the leaf of the hottest stack is the hot loop, not main
    hottest = max(folded.stacks, key=folded.stacks.__getitem__)
    assert hottest.endswith(";leaf_mul")
    assert ";recurse;recurse;recurse;recurse;" in "".join(folded.stacks) + ";"


def test_kernel_frames_and_dso_names() -> None:
    folded = fold(load("pid_c_framepointers"))
    assert "do_syscall_64" in folded.kernel_frames
    assert "leaf_mul" not in folded.kernel_frames
    assert folded.frame_dso["leaf_mul"] == "hot"
    assert folded.frame_dso["__libc_start_call_main"] == "libc.so.6"


def test_unknown_symbol_is_named_after_its_dso() -> None:
    folded = fold(load("pid_dash"))
    text = folded_text(folded.stacks)
    assert "sh;[dash]" in text
    # a frame with neither symbol nor DSO stays [unknown]
    assert "[unknown]" in text
    assert "(/usr/bin/dash)" not in text


def test_comm_with_spaces_and_odd_symbols() -> None:
    text = (
        "Web Content  4242/4250    10101010 \n"
        "\t    7f0000001000 operator()(int) const (/usr/lib/libxul.so)\n"
        "\t    7f0000002000 ns::f<a;b> (/opt/app (deleted))\n"
        "\t    7f0000003000 main (/opt/app)\n"
        "\n"
    )
    folded = fold(text)
    assert folded.stacks == {"Web Content;main;ns::f<a:b>;operator()(int) const": 1}
    assert folded.frame_dso["ns::f<a:b>"] == "app (deleted)"


def test_parse_header_and_frame_line_reject_garbage() -> None:
    assert parse_header("python3  5089/5089    10101010 ") == "python3"
    assert parse_header("no numbers here") is None
    assert parse_header("x 12/ab 100") is None
    assert parse_frame_line("\t  zz12 foo (/bin/x)") is None
    assert parse_frame_line("\t  1234 foo") is None
    assert parse_frame_line("\t  1234 foo (/bin/x)").name == "foo"  # type: ignore[union-attr]


@pytest.mark.parametrize("name", sorted(RECORDED_SAMPLES))
def test_truncated_copies_give_partial_data(name: str) -> None:
    text = load(name)
    full = fold(text)
    for frac in (0.1, 0.33, 0.5, 0.77, 0.999):
        cut = text[: int(len(text) * frac)]
        part = fold(cut)
        assert part.samples <= full.samples
        assert part.samples == sum(part.stacks.values())
        # every stack of the partial result is a real stack of the full result
        for stack, n in part.stacks.items():
            assert full.stacks.get(stack, 0) >= n, stack
        ends_inside_sample = not cut.endswith("\n\n") and cut.rstrip("\n") != ""
        if ends_inside_sample:
            assert part.dropped_partial_sample


def test_garbled_lines_are_counted_and_skipped() -> None:
    lines = load("pid_c_framepointers").split("\n")
    garbled = []
    for i, line in enumerate(lines):
        garbled.append(line)
        if i % 50 == 7:
            garbled.append("\t   \x00\x01garbage line without structure")
        if i % 97 == 3:
            garbled.append("%%%% not a header at all %%%%")
    folded = fold("\n".join(garbled))
    assert folded.bad_lines > 0
    assert 0 < folded.samples <= RECORDED_SAMPLES["pid_c_framepointers"]


def test_pure_garbage_gives_no_samples() -> None:
    folded = fold("this is not\nperf script output\n\tat all\n")
    assert folded.samples == 0
    assert folded.bad_lines == 3


# ---------------------------------------------------------------- hypothesis

names = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=";\n"),
                min_size=1, max_size=20).map(str.strip).filter(bool)
dsos = st.sampled_from(["/usr/lib/libc.so.6", "[kernel.kallsyms]", "/opt/my app/bin", "[unknown]"])
frame = st.tuples(names, dsos)
sample = st.tuples(names.filter(lambda s: " " not in s or True), st.lists(frame, min_size=1, max_size=8))


def render(samples: list[tuple[str, list[tuple[str, str]]]]) -> str:
    out = []
    for i, (comm, frames) in enumerate(samples):
        out.append(f"{comm}  {100 + i}/{100 + i}    10101010 \n")
        for j, (sym, dso) in enumerate(frames):
            out.append(f"\t    {0x1000 + 16 * j:x} {sym} ({dso})\n")
        out.append("\n")
    return "".join(out)


def expected_name(sym: str, dso: str) -> str:
    if sym == "[unknown]" and dso != "[unknown]":
        base = dso.rsplit("/", 1)[-1]
        return base if base.startswith("[") else f"[{base}]"
    return sym


@settings(max_examples=200, deadline=None)
@given(st.lists(sample, max_size=12))
def test_generated_perf_script_folds_exactly(samples: list[tuple[str, list[tuple[str, str]]]]) -> None:
    expected: dict[str, int] = {}
    for comm, frames in samples:
        key = ";".join([comm] + [expected_name(s, d) for s, d in reversed(frames)])
        expected[key] = expected.get(key, 0) + 1
    folded = fold(render(samples))
    assert folded.stacks == expected
    assert folded.bad_lines == 0


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=2000))
def test_random_text_never_raises(text: str) -> None:
    folded = fold(text)
    assert folded.samples == sum(folded.stacks.values())
    assert folded.samples >= 0 and folded.bad_lines >= 0


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_random_damage_to_real_output_never_raises(data: st.DataObject) -> None:
    text = load("pid_dash")
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, min(len(text), start + 400)))
    junk = data.draw(st.text(max_size=200))
    folded = fold(text[:start] + junk + text[end:])
    assert folded.samples == sum(folded.stacks.values())
    assert folded.samples <= RECORDED_SAMPLES["pid_dash"] + junk.count("\n")


def test_comm_pid_headers_of_the_five_field_script() -> None:
    """-F comm,pid,ip,sym,dso: the header is 'comm pid'; comm may hold '/', ':' and digits."""
    text = ("kworker/0:1-ev 123 \n\t ffffffff8136013d handle_softirqs ([kernel.kallsyms])\n\n"
            "swapper     0 \n\t ffffffff821f1409 default_idle ([kernel.kallsyms])\n\n"
            "app 2 77 \n\t 1155 leaf (/bin/app)\n\t 119c main (/bin/app)\n\n")
    f = fold(text)
    assert f.samples == 3 and f.bad_lines == 0
    assert f.stacks == {"kworker/0:1-ev;handle_softirqs": 1, "swapper;default_idle": 1, "app 2;main;leaf": 1}
    assert parse_header("x 12/ab 100") is None  # garbled 'pid/tid period', not 'comm pid'


@pytest.mark.parametrize("name", sorted(RECORDED_SAMPLES))
def test_stacks_are_kept_apart_by_pid(name: str) -> None:
    """by_pid holds the same stacks split by the header's pid: per-pid totals are the header counts."""
    text = load(name)
    folded = fold(text)
    headers: dict[int, int] = {}
    for line in text.splitlines():
        if line and not line[0].isspace():
            pid = int(line.rsplit(None, 2)[-2].partition("/")[0])
            headers[pid] = headers.get(pid, 0) + 1
    assert {pid: sum(s.values()) for pid, s in folded.by_pid.items()} == headers
    merged: dict[str, int] = {}
    for stacks in folded.by_pid.values():
        for stack, n in stacks.items():
            merged[stack] = merged.get(stack, 0) + n
    assert merged == folded.stacks


def test_two_processes_with_one_name_are_two_pids() -> None:
    text = "burn 101\n\t  10 spin (/x/burn)\n\nburn 102\n\t  10 spin (/x/burn)\n\nburn 101\n\t  10 spin (/x/burn)\n\n"
    folded = fold(text)
    assert folded.stacks == {"burn;spin": 3}
    assert folded.by_pid == {101: {"burn;spin": 2}, 102: {"burn;spin": 1}}


def test_sample_times_give_the_window_perf_sampled() -> None:
    """-F comm,pid,time,ip,sym,dso (the broker's fields): 'comm pid time: ' headers, as perf 6.1 prints them."""
    text = ("swapper     0 14302.235453: \n\tffffffff821f2c2b pv_native_safe_halt ([kernel.kallsyms])\n\n"
            "my prog: 2   4242 14303.043534: \n\t  55d1 work (/x/my prog)\n\n"
            "my prog: 2   4242 14302.500000: \n\t  55d1 work (/x/my prog)\n\n")
    folded = fold(text)
    assert folded.stacks == {"swapper;pv_native_safe_halt": 1, "my prog: 2;work": 2}
    assert folded.by_pid == {0: {"swapper;pv_native_safe_halt": 1}, 4242: {"my prog: 2;work": 2}}
    assert (folded.first_time_s, folded.last_time_s) == (14302.235453, 14303.043534)
    assert folded.bad_lines == 0
    assert fold(load("pid_dash")).first_time_s is None  # fixtures without time
    bad = fold("x 1 12.5x: \n\t  1 f (/a)\n\n")  # not a time: the whole line is the header, and garbled
    assert bad.first_time_s is None and bad.samples == 0 and bad.bad_lines >= 1
