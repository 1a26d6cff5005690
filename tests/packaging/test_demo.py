"""`make demo` as README's first command runs it: packaging/run-demo.sh as root does the
set-up, starts a broker on a private socket, runs packaging/demo.py (the frontend as
perfmcp-granted under the real MCP client) and stops everything.

Known answers: the demo's busy program is one thread in a loop of demo_work ->
demo_checksum (300,000 divisions) + demo_transform (100,000 square roots), so perf_triage
quick names that pid (a thread that wants a whole CPU), the profile's hottest function is
demo_checksum with over half the samples, and the flame graph and folded stacks are written
to PERF_MCP_DEMO_OUT. Afterwards no broker of the demo runs and its temp dir is gone."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

import helpers

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_make_demo_names_the_busy_process_and_profiles_it(root_required: None, tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = set(Path("/tmp").glob("perf-mcp-demo.*"))
    res = subprocess.run(["bash", str(REPO / "packaging" / "run-demo.sh")], capture_output=True, text=True,
                         timeout=300, stdin=subprocess.DEVNULL, cwd=REPO,
                         env={**os.environ, "PERF_MCP_DEMO_OUT": str(out)})
    text = res.stdout
    print(text[-6000:])
    assert res.returncode == 0, res.stderr[-4000:]
    pid = int(re.search(r"demo: started .* pid (\d+)", text).group(1))  # type: ignore[union-attr]
    # perf_triage quick: the busy program is a root cause's culprit, with the profile as the next call
    triage = text[text.index("== perf_triage"):text.index("== perf_cpu_profile")]
    assert f"the busy process (pid {pid}) is named as a culprit" in triage, triage
    assert f"culprit: process pid {pid}" in triage and f"next: perf_cpu_profile {{'pid': {pid}" in triage, triage
    # the profile: demo_checksum is the hottest function, over half of the samples
    m = re.search(r"^\s+([\d.]+)\s+([\d.]+)\s+demo_checksum ", text, re.M)
    assert m is not None and float(m.group(1)) > 50.0, text[text.index("Top functions"):]
    first = re.search(r"^Top functions:.*\n\s+[\d.]+\s+[\d.]+\s+(\S+)", text, re.M)
    assert first is not None and first.group(1) == "demo_checksum"
    assert "Hottest stack" in text and "demo_work -> demo_checksum" in text
    svg, folded = out / "flamegraph.svg", out / "stacks.folded"
    assert svg.read_text().lstrip().startswith(("<?xml", "<svg")) and "demo_checksum" in svg.read_text()
    assert any(line.rsplit(" ", 1)[0].endswith("demo_checksum") for line in folded.read_text().splitlines())
    # everything stopped: the busy program, the broker, the demo's temp dir
    assert not Path(f"/proc/{pid}").exists() or helpers.read_proc_stat(pid) is None
    assert set(Path("/tmp").glob("perf-mcp-demo.*")) <= before
    brokers = [p for p in Path("/proc").iterdir() if p.name.isdecimal() and "perf-mcp-demo." in _cmdline(p)]
    assert brokers == []


def _cmdline(p: Path) -> str:
    try:
        return (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
