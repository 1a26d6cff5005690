"""Profile analysis (top functions, stacks, findings) and the flame graph SVG."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from perf_mcp.profile.analysis import analyse, findings
from perf_mcp.profile.flamegraph import MIN_WIDTH_PX, PAD_SIDE, WIDTH, render_svg
from perf_mcp.profile.perf_script import Folded, fold

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "perf_script"
SVG = "{http://www.w3.org/2000/svg}"


def folded(stacks: dict[str, int], kernel: frozenset[str] = frozenset()) -> Folded:
    return Folded(stacks=stacks, samples=sum(stacks.values()), kernel_frames=kernel,
                  frame_dso={f: "app" for s in stacks for f in s.split(";")[1:]})


def test_self_and_total_counts_with_recursion() -> None:
    a = analyse(folded({
        "app;main;work;work;hot": 6,  # recursion: work counts once per sample in total
        "app;main;work;cold": 3,
        "app;main": 1,
    }))
    by_self = {f.function: f for f in a.top_self}
    by_total = {f.function: f for f in a.top_total}
    assert by_self["hot"].self_samples == 6 and by_self["hot"].self_pct == 60.0
    assert by_total["work"].total_samples == 9 and by_total["work"].total_pct == 90.0
    assert by_total["main"].total_samples == 10 and by_total["main"].self_samples == 1
    assert a.top_self[0].function == "hot"
    assert a.top_total[0].function == "main"
    assert a.hottest_stacks[0].stack == ["app", "main", "work", "work", "hot"]
    assert a.hottest_stacks[0].pct == 60.0


def test_idle_is_in_the_denominator_but_not_in_the_rankings() -> None:
    a = analyse(folded({"swapper;start_kernel;do_idle;default_idle": 90, "app;main;hot": 10},
                       kernel=frozenset({"start_kernel", "do_idle", "default_idle"})))
    assert a.idle_pct == 90.0
    assert a.busy_samples == 10
    assert [f.function for f in a.top_self] == ["hot"]
    assert a.top_self[0].self_pct == 10.0
    assert all(s.stack[0] != "swapper" for s in a.hottest_stacks)
    ids = {f.id: f for f in findings(a, target="system-wide", rate_hz=99)}
    assert "cpu_profile.mostly_idle" in ids
    # the one busy function is 100% of busy samples: a warning
    assert ids["cpu_profile.hot_function"].severity == "warning"


def test_findings_kernel_time_and_missing_symbols() -> None:
    a = analyse(folded({"app;main;sys_read": 40, "app;main;[libfoo.so]": 35, "app;main;work": 25},
                       kernel=frozenset({"sys_read"})))
    ids = {f.id for f in findings(a, target="pid 1", rate_hz=99)}
    assert {"cpu_profile.kernel_time", "cpu_profile.missing_symbols"} <= ids
    a = analyse(folded({"app;main;a": 25, "app;main;b": 25, "app;main;c": 25, "app;main;d": 25}))
    f = {x.id: x for x in findings(a, target="pid 1", rate_hz=99)}
    assert f["cpu_profile.hot_function"].severity == "info"  # spread out: nothing above 30%
    assert "cpu_profile.kernel_time" not in f


def test_real_fixture_hot_function() -> None:
    a = analyse(fold((FIXTURES / "pid_c_framepointers.txt").read_text()))
    assert a.top_self[0].function == "leaf_mul"
    assert a.top_self[0].module == "hot"
    assert a.top_total[0].function in ("__libc_start_call_main", "main")
    assert a.top_total[0].total_pct == 100.0


def _rects(svg: str) -> list[tuple[str, float, float]]:
    root = ET.fromstring(svg)
    out = []
    for g in root.iter(f"{SVG}g"):
        title = g.find(f"{SVG}title").text  # type: ignore[union-attr]
        rect = g.find(f"{SVG}rect")
        out.append((title, float(rect.get("x")), float(rect.get("width"))))  # type: ignore[union-attr,arg-type]
    return out


def test_flamegraph_widths_are_proportional_and_titles_have_counts() -> None:
    svg = render_svg({"app;main;a": 30, "app;main;b": 10, "other;x": 60}, title="T", subtitle="S")
    rects = {t.split(" (")[0]: (t, x, w) for t, x, w in _rects(svg)}
    inner = WIDTH - 2 * PAD_SIDE
    assert abs(rects["all"][2] - inner) < 0.01
    assert abs(rects["other"][2] - 0.6 * inner) < 0.01
    assert abs(rects["a"][2] - 3 * rects["b"][2]) < 0.01
    assert rects["a"][0] == "a (30 samples, 30.00%)"
    assert rects["main"][0] == "main (40 samples, 40.00%)"
    # children sit inside their parent
    assert rects["main"][1] <= rects["a"][1] and rects["a"][1] + rects["a"][2] <= rects["main"][1] + rects["main"][2] + 0.01


def test_flamegraph_escapes_names_and_drops_tiny_frames() -> None:
    evil = 'x<script>alert("&")</script>'
    svg = render_svg({f"app;{evil}": 1_000_000, "app;tiny": 1}, title="<&>", subtitle="\x01")
    ET.fromstring(svg)  # well-formed XML
    assert "<script>" not in svg
    titles = [t for t, _, _ in _rects(svg)]
    assert any(t.startswith(evil) for t in titles)
    assert not any(t.startswith("tiny") for t in titles)  # narrower than MIN_WIDTH_PX


def test_flamegraph_of_real_fixture_is_valid() -> None:
    f = fold((FIXTURES / "system_wide_idle.txt").read_text())
    svg = render_svg(f.stacks, kernel_frames=f.kernel_frames)
    rects = _rects(svg)
    assert rects[0][0].startswith(f"all ({f.samples} samples, 100.00%)")
    assert len(rects) > 50
    assert re.search(r'<svg [^>]*width="1200"', svg)


def test_ties_rank_named_functions_before_unsymbolised_frames() -> None:
    a = analyse(folded({"py;[unknown];[libpython.so];_PyEval_EvalFrameDefault": 5}))
    assert a.top_total[0].function == "_PyEval_EvalFrameDefault"
    assert {f.function for f in a.top_total[1:]} == {"[unknown]", "[libpython.so]"}
