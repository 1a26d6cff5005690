"""Profile analysis (top functions, stacks, findings) and the flame graph SVG."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from perf_mcp.profile import procs
from perf_mcp.profile.analysis import analyse, findings
from perf_mcp.profile.flamegraph import MIN_WIDTH_PX, PAD_SIDE, WIDTH, render_svg
from perf_mcp.profile.perf_script import Folded, fold

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "perf_script"
SVG = "{http://www.w3.org/2000/svg}"


def folded(stacks: dict[str, int], kernel: frozenset[str] = frozenset()) -> Folded:
    return Folded(stacks=stacks, samples=sum(stacks.values()), kernel_frames=kernel,
                  frame_dso={f: "app" for s in stacks for f in s.split(";")[1:]})


def test_self_and_total_counts_with_recursion_in_one_merged_list() -> None:
    a = analyse(folded({
        "app;main;work;work;hot": 6,  # recursion: work counts once per sample in total
        "app;main;work;cold": 3,
        "app;main": 1,
    }))
    rows = {f.function: f for f in a.functions}
    assert (rows["hot"].self_pct, rows["hot"].total_pct) == (60.0, 60.0)
    assert (rows["work"].self_pct, rows["work"].total_pct) == (0.0, 90.0)
    assert (rows["main"].self_pct, rows["main"].total_pct) == (10.0, 100.0)
    assert [f.function for f in a.functions] == ["hot", "cold", "main", "work"]  # by self, then total
    assert a.top_self[0] == ("hot", 6)
    assert a.hottest_stacks[0].stack == ["app", "main", "work", "work", "hot"]
    assert a.hottest_stacks[0].pct == 60.0


def test_merged_list_adds_the_top_by_total_to_the_top_by_self() -> None:
    stacks = {f"app;main;mid;leaf{i}": 10 - i for i in range(8)}
    a = analyse(folded(stacks), top_n=3)
    names = [f.function for f in a.functions]
    assert names[:3] == ["leaf0", "leaf1", "leaf2"]
    assert set(names[3:]) == {"main", "mid"}  # callers of everything: the top by total
    assert len(names) <= 3 + 3


def test_idle_from_the_expected_samples_not_from_the_idle_task() -> None:
    # a tickless kernel samples idle CPUs rarely: 10 idle-task samples where 100 were due
    stacks = {"swapper;start_kernel;do_idle;default_idle": 10, "app;main;hot": 100}
    k = frozenset({"start_kernel", "do_idle", "default_idle"})
    a = analyse(folded(stacks, kernel=k), expected=200)
    assert a.idle_pct == 50.0 and a.busy_samples == 100
    assert analyse(folded(stacks, kernel=k)).idle_pct == round(100 * 10 / 110, 2)  # no expected count: old share
    assert [f.function for f in a.functions if f.self_pct] == ["hot"]
    assert all(s.stack[0] != "swapper" for s in a.hottest_stacks)
    idle = analyse(folded(stacks, kernel=k), expected=2000)
    ids = {f.id: f for f in findings(idle, target="system-wide", rate_hz=99, duration_s=3)}
    assert ids["cpu_profile.mostly_idle"].next.tool == "perf_offcpu_profile"
    assert ids["cpu_profile.mostly_idle"].next.arguments == {"duration_s": 3}
    assert ids["cpu_profile.hot_function"].severity == "warning"  # 100% of busy samples


def test_a_process_mostly_off_cpu_points_to_its_off_cpu_profile() -> None:
    a = analyse(folded({"app;main;hot": 30}), expected=300)
    assert a.idle_pct == 90.0
    f = {x.id: x for x in findings(a, target="pid 42 (app)", rate_hz=100, pid=42, duration_s=3)}
    off = f["cpu_profile.mostly_off_cpu"]
    assert off.next.tool == "perf_offcpu_profile" and off.next.arguments == {"pid": 42, "duration_s": 3}
    assert off.metrics["expected_samples"] == 300.0
    # a process that exited early is said so in a warning instead (its absence is not waiting)
    assert "cpu_profile.mostly_off_cpu" not in {x.id for x in findings(a, target="t", rate_hz=100, pid=42,
                                                                       exited=True)}


def by_pid(stacks: dict[tuple[int, str], int], kernel: frozenset[str] = frozenset(),
           dso: dict[str, str] | None = None) -> Folded:
    out: dict[int, dict[str, int]] = {}
    merged: dict[str, int] = {}
    for (pid, stack), n in stacks.items():
        out.setdefault(pid, {})[stack] = n
        merged[stack] = merged.get(stack, 0) + n
    frame_dso = {f: "app" for s in merged for f in s.split(";")[1:]}
    frame_dso.update(dso or {})
    return Folded(stacks=merged, samples=sum(merged.values()), kernel_frames=kernel, frame_dso=frame_dso, by_pid=out)


def test_processes_with_the_same_name_stay_apart_and_perf_mcps_own_are_left_out() -> None:
    f = by_pid({(101, "burn;main;spin"): 50, (102, "burn;main;spin"): 40, (7, "perf;main;perf_poll"): 30,
                (8, "python3;main;_PyEval_EvalFrameDefault"): 20})
    a = analyse(f, own_pids=frozenset({7, 8}), expected=200)
    assert [(p.pid, p.comm, p.samples) for p in a.processes] == [(101, "burn", 50), (102, "burn", 40)]
    assert a.own_samples == 50 and a.busy_samples == 140
    assert {x.function for x in a.functions}.isdisjoint({"perf_poll", "_PyEval_EvalFrameDefault"})
    assert all(s.stack[0] == "burn" for s in a.hottest_stacks)
    assert a.runtimes == []  # perf-mcp's own python is not judged either
    # system-wide, the hot function's main process is the next profile's target when it holds most of it
    a = analyse(by_pid({(101, "burn;main;spin"): 90, (102, "burn;main;spin"): 10}), expected=200)
    hot = {x.id: x for x in findings(a, target="system-wide", rate_hz=99, duration_s=2)}["cpu_profile.hot_function"]
    assert hot.next.tool == "perf_cpu_profile" and hot.next.arguments == {"pid": 101, "duration_s": 2}


def test_kernel_heavy_points_to_syscall_count_of_the_process() -> None:
    k = frozenset({"sys_read", "entry_SYSCALL_64"})
    a = analyse(by_pid({(5, "cat;main;entry_SYSCALL_64;sys_read"): 80, (6, "x;main;work"): 20}, kernel=k))
    f = {x.id: x for x in findings(a, target="system-wide", rate_hz=99, duration_s=4)}["cpu_profile.kernel_time"]
    assert f.next.tool == "perf_syscall_count" and f.next.arguments == {"pid": 5, "duration_s": 4}
    one = findings(analyse(by_pid({(5, "cat;main;sys_read"): 80}, kernel=k)), target="pid 5", rate_hz=99, pid=5)
    assert next(x for x in one if x.id == "cpu_profile.kernel_time").next.arguments == {"pid": 5, "duration_s": 5}


def test_findings_missing_symbols() -> None:
    a = analyse(folded({"app;main;sys_read": 40, "app;main;[libfoo.so]": 35, "app;main;work": 25},
                       kernel=frozenset({"sys_read"})))
    ids = {f.id for f in findings(a, target="pid 1", rate_hz=99)}
    assert {"cpu_profile.kernel_time", "cpu_profile.missing_symbols"} <= ids
    a = analyse(folded({"app;main;a": 25, "app;main;b": 25, "app;main;c": 25, "app;main;d": 25}))
    f = {x.id: x for x in findings(a, target="pid 1", rate_hz=99)}
    assert f["cpu_profile.hot_function"].severity == "info"  # spread out: nothing above 30%
    assert "cpu_profile.kernel_time" not in f


def test_python_eval_loop_points_to_perf_support_with_the_version_seen() -> None:
    py = {"_PyEval_EvalFrameDefault": "python3.11", "PyObject_Call": "python3.11"}
    a = analyse(by_pid({(9, "python3;main;_PyEval_EvalFrameDefault"): 70,
                        (9, "python3;main;_PyEval_EvalFrameDefault;PyObject_Call"): 30}, dso=py))
    [f] = [x for x in findings(a, target="pid 9", rate_hz=99, pid=9) if x.id == "cpu_profile.interpreter"]
    assert f.severity == "warning" and f.metrics["interpreter_pct"] == 100.0
    assert "-X perf" in f.suggestion and "PYTHONPERFSUPPORT=1" in f.suggestion
    assert "Python 3.11" in f.suggestion and "py-spy" in f.suggestion
    new = analyse(by_pid({(9, "python3;main;_PyEval_EvalFrameDefault"): 70},
                         dso={"_PyEval_EvalFrameDefault": "libpython3.12.so.1.0"}))
    [g] = [x for x in findings(new, target="pid 9", rate_hz=99, pid=9) if x.id == "cpu_profile.interpreter"]
    assert "-X perf" in g.suggestion and "3.12 (" not in g.suggestion
    # bpftrace leaves a stripped interpreter's own frames unnamed: such samples of a process that runs the
    # eval loop count as the interpreter's, as do leaves in its module; a named C library leaf does not
    mixed = analyse(by_pid({(9, "python3;[unknown];_PyEval_EvalFrameDefault"): 30, (9, "python3;[unknown];[unknown]"): 50,
                            (9, "python3;[unknown];PyDict_SetItem"): 10, (9, "python3;[unknown];memcpy"): 10},
                           dso={"_PyEval_EvalFrameDefault": "python3.11", "PyDict_SetItem": "python3.11",
                                "memcpy": "libc.so.6", "[unknown]": "[unknown]"}))
    assert mixed.runtimes[0].eval_samples == 90 and mixed.runtimes[0].module == "python3.11"
    # perf support already on: Python functions are named, nothing to say
    on = analyse(by_pid({(9, "python3;main;_PyEval_EvalFrameDefault;py::work:/x.py"): 70}))
    assert "cpu_profile.interpreter" not in {x.id for x in findings(on, target="pid 9", rate_hz=99, pid=9)}


def test_other_eval_loops_and_unnamed_jit_code() -> None:
    for comm, frame, word in (("ruby", "vm_exec_core", "YJIT"), ("perl", "Perl_runops_standard", "NYTProf")):
        a = analyse(by_pid({(3, f"{comm};main;{frame}"): 50}))
        [f] = [x for x in findings(a, target="pid 3", rate_hz=99, pid=3) if x.id == "cpu_profile.interpreter"]
        assert word in f.suggestion
    node = analyse(by_pid({(4, "node;[unknown];[unknown]"): 80, (4, "node;main;uv_run"): 20}))
    ids = {x.id: x for x in findings(node, target="pid 4", rate_hz=99, pid=4)}
    jit = ids["cpu_profile.jit_unnamed"]
    assert "--perf-basic-prof" in jit.suggestion and "/tmp/perf-4.map" in jit.detail
    assert "cpu_profile.missing_symbols" not in ids  # said once, by the JIT finding
    java = analyse(by_pid({(5, "java;[unknown]"): 80, (5, "java;JavaMain;jni_CallStaticVoidMethod"): 20},
                          dso={"jni_CallStaticVoidMethod": "libjvm.so"}))
    jit = {x.id: x for x in findings(java, target="pid 5", rate_hz=99, pid=5,
                                     perf_maps=frozenset({5}))}["cpu_profile.jit_unnamed"]
    assert "perf-map-agent" in jit.suggestion and "exists but did not name" in jit.detail


def test_real_fixture_hot_function() -> None:
    a = analyse(fold((FIXTURES / "pid_c_framepointers.txt").read_text()))
    assert a.functions[0].function == "leaf_mul"
    assert a.functions[0].module == "hot"
    by_total = max(a.functions, key=lambda f: f.total_pct)
    assert by_total.total_pct == 100.0
    assert [p.comm for p in a.processes] == ["hot"] and a.processes[0].pid > 0


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
    assert a.functions[0].function == "_PyEval_EvalFrameDefault"
    assert {f.function for f in a.functions[1:]} == {"[unknown]", "[libpython.so]"}


def _proc(pid: int, ppid: int, comm: str) -> procs.ProcInfo:
    return procs.ProcInfo(pid=pid, ppid=ppid, comm=comm, command=comm, threads=1, cpu_ticks=0)


def test_own_pids_are_perf_mcp_programs_this_process_and_their_descendants() -> None:
    seen = {p.pid: p for p in (
        _proc(1, 0, "systemd"), _proc(10, 1, "perf-mcp-broker"), _proc(11, 10, "perf"), _proc(12, 10, "bpftrace"),
        _proc(13, 12, "bpftrace-helper"), _proc(20, 1, "bash"), _proc(21, 20, "perf"),  # a user's own perf
        _proc(30, 20, "python3"), _proc(40, 1, "perf-mcp"), _proc(41, 40, "perf-mcp")
    )}
    assert procs.own_pids(seen, self_pid=30) == {10, 11, 12, 13, 30, 40, 41}
    assert 21 not in procs.own_pids(seen, self_pid=99) and 1 not in procs.own_pids(seen, self_pid=99)
    loop = {5: _proc(5, 6, "a"), 6: _proc(6, 5, "b")}  # a ppid cycle (pid reuse between reads) ends
    assert procs.own_pids(loop, self_pid=99) == {99}


def test_snapshot_names_this_process_by_its_command_line() -> None:
    import os
    import sys
    seen = procs.snapshot()
    me = seen[os.getpid()]
    assert me.ppid == os.getppid() and me.threads >= 1
    assert me.command.startswith(sys.executable.rsplit("/", 1)[-1]) or sys.executable in me.command or "python" in me.command
    assert procs.command_line(b"", "kworker/0:1") == "[kworker/0:1]"
    assert procs.command_line(b"a\0b c\0", "x") == "a b c"
    assert len(procs.command_line(b"x" * 1000, "x")) == procs.COMMAND_MAX


def test_every_next_call_names_a_served_tool_with_arguments_it_accepts() -> None:
    import jsonschema

    from perf_mcp.registry import discover

    tools = discover().tools
    k = frozenset({"sys_read", "do_idle"})
    cases = [
        (analyse(by_pid({(0, "swapper;do_idle"): 5, (5, "cat;main;sys_read"): 80, (6, "x;main;w"): 10}, kernel=k),
                 expected=2000), None, 60.0),
        (analyse(by_pid({(5, "cat;main;sys_read"): 30}, kernel=k), expected=300), 5, 1.0),
        (analyse(by_pid({(5, "a;main;w"): 60, (6, "b;main;w"): 30, (7, "c;main;sys_read"): 45}, kernel=k),
                 expected=300), None, 2.5),
    ]
    seen = set()
    for a, pid, d in cases:
        for f in findings(a, target="t", rate_hz=99, pid=pid, duration_s=d):
            if f.next is not None:
                seen.add((f.id, f.next.tool))
                jsonschema.validate(f.next.arguments, tools[f.next.tool].input_schema())
    assert {t for _, t in seen} == {"perf_offcpu_profile", "perf_syscall_count", "perf_cpu_profile"}, seen


def test_one_runtime_finding_per_runtime_and_the_hot_frame_it_explains_is_not_said_twice() -> None:
    py = {"_PyEval_EvalFrameDefault": "python3.11", "[python3.11]": "python3.11"}
    a = analyse(by_pid({(7, "python3;main;_PyEval_EvalFrameDefault;[python3.11]"): 60,
                        (8, "python3;main;_PyEval_EvalFrameDefault;[python3.11]"): 30,
                        (9, "burn;main;spin"): 10}, dso=py), expected=200)
    fs = findings(a, target="system-wide", rate_hz=99)
    [interp] = [f for f in fs if f.id == "cpu_profile.interpreter"]
    assert interp.title.startswith("pid 7 (python3)")  # the busiest process of that runtime
    assert "cpu_profile.hot_function" not in {f.id for f in fs}  # [python3.11] on top: the interpreter's
