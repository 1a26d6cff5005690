"""Every system-tool test that makes a cgroup says which hierarchy it needs (the cgroup_v1 /
cgroup_v2 / cgroup_any markers of tests/conftest.py), so that a host without it skips the
test with the reason instead of failing it, and a host with it runs it: a test that calls
systools_util's limited_cgroup or memory_cgroup (v1 or v2, as the host has the
controllers) carries the marker itself or through its module's pytestmark."""

from __future__ import annotations

import ast
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAKERS = {"limited_cgroup", "memory_cgroup"}
MARKERS = {"cgroup_v1", "cgroup_v2", "cgroup_any"}


def _markers(nodes: list[ast.expr]) -> set[str]:
    """cgroup marker names among decorators or a pytestmark value: pytest.mark.X(...)."""
    found: set[str] = set()
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Attribute) and sub.attr in MARKERS:
                found.add(sub.attr)
    return found


def undeclared(source: str) -> list[str]:
    """Test functions in a module's source that make a cgroup without a cgroup marker."""
    tree = ast.parse(source)
    module_marks: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark"
                                                for t in node.targets):
            module_marks |= _markers([node.value])
    out = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.name.startswith("test_"):
            continue
        makes = any(isinstance(n, ast.Name) and n.id in MAKERS for n in ast.walk(node))
        if makes and not (module_marks or _markers(node.decorator_list)):
            out.append(node.name)
    return out


def test_every_test_making_a_cgroup_declares_its_hierarchy() -> None:
    modules = sorted(HERE.glob("test_*.py"))
    makers = [p.name for p in modules if MAKERS & {n.id for n in ast.walk(ast.parse(p.read_text()))
                                                    if isinstance(n, ast.Name)}]
    print(f"\nmodules making cgroups: {makers}")
    assert len(makers) >= 3, makers  # own cgroup, memory pressure, swapping
    problems = {p.name: bad for p in modules if (bad := undeclared(p.read_text()))}
    assert not problems, problems


def test_the_check_finds_an_undeclared_test() -> None:
    bare = "async def test_x():\n    with memory_cgroup(1) as cg:\n        pass\n"
    assert undeclared(bare) == ["test_x"]
    assert undeclared("@pytest.mark.cgroup_any('memory')\n" + bare) == []
    assert undeclared("pytestmark = [pytest.mark.root, pytest.mark.cgroup_v1('memory')]\n" + bare) == []
