"""SECURITY.md: linked from README's security model, and every file it cites exists
(a hardening item that names a file that was renamed or removed is out of date)."""

from __future__ import annotations

import re

import helpers

DOC = helpers.REPO / "SECURITY.md"
SEARCH = ("", "broker/perf_mcp_broker/", "protocol/perf_mcp_protocol/", "packaging/", "polkit/")


def test_readme_security_model_links_it() -> None:
    readme = helpers.REPO / "README.md"
    section = readme.read_text().split("## Security model", 1)[1].split("\n## ", 1)[0]
    assert "[SECURITY.md](SECURITY.md)" in section


def test_every_cited_file_exists() -> None:
    cited = set(re.findall(r"`([\w./*-]+\.(?:py|md|txt|service|policy|bt))`", DOC.read_text()))
    cited |= set(re.findall(r"\]\(([\w./-]+)\)", DOC.read_text()))
    assert len(cited) >= 15, cited
    missing = []
    for name in sorted(cited):
        if not any(list(helpers.REPO.glob(base + name)) for base in SEARCH):
            missing.append(name)
    assert missing == []
