#!/usr/bin/env python3
"""The body of `make demo`: profile a busy process through perf-mcp and print a report.

As root (packaging/run-demo.sh has started a broker):
    .venv/bin/python packaging/demo.py --broker-socket PATH --user perfmcp-granted
runs the frontend as that user (setpriv) under the real MCP client, calls perf_info,
perf_triage (quick) and a 5-second perf_cpu_profile of a busy process it starts (as the same user),
writes the flame graph and folded stacks to ./out/, prints the report, and stops
everything it started.

As a user:
    .venv/bin/python packaging/demo.py --unprivileged
runs the same as yourself against the default broker socket: perf_info always
works; profiling works only if a broker is installed and you are granted, and
otherwise the demo says how to get there.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FRONTEND = REPO / ".venv" / "bin" / "perf-mcp"
OUT = Path(os.environ.get("PERF_MCP_DEMO_OUT") or REPO / "out")  # where the flame graph and stacks go
SETPRIV = "/usr/bin/setpriv"

BUSY_C = r"""
#include <math.h>
#include <stdlib.h>
#include <unistd.h>
volatile double demo_sink;
__attribute__((noinline)) double demo_checksum(int n) { double s = 0; for (int i = 1; i < n; i++) s += 1.0 / i; return s; }
__attribute__((noinline)) double demo_transform(int n) { double s = 0; for (int i = 0; i < n; i++) s += sqrt((double)i); return s; }
__attribute__((noinline)) void demo_work(void) { demo_sink += demo_checksum(300000) + demo_transform(100000); }
int main(int argc, char **argv) { alarm(argc > 1 ? atoi(argv[1]) : 120); for (;;) demo_work(); }
"""
PY_BUSY = "import time\nend = time.time() + 120\nwhile time.time() < end:\n    sum(i * i for i in range(10000))\n"


# What profiling without a broker or a grant answers: expected in --unprivileged mode.
EXPECTED_UNPRIVILEGED = ("BROKER_UNAVAILABLE", "PERMISSION_DENIED")


def say(text: str = "") -> None:
    print(text, flush=True)


class Demo:
    def __init__(self, socket: str | None, user: str | None) -> None:
        self.socket = socket
        self.user = pwd.getpwnam(user) if user else None
        self.tmp = Path(tempfile.mkdtemp(prefix="pmcp-demo-"))  # not /tmp/perf-*: perf reads those as JIT maps
        self.tmp.chmod(0o755)
        self.busy: subprocess.Popen[bytes] | None = None
        self.log = open(self.tmp / "frontend.log", "w+")

    # ------------------------------------------------------------ processes we own

    def _as_user(self, argv: list[str]) -> list[str]:
        if self.user is None:
            return argv
        return [SETPRIV, f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--init-groups", "--", *argv]

    def start_busy(self) -> tuple[int, str]:
        cc = shutil.which("cc") or shutil.which("gcc")
        argv: list[str]
        if cc:
            src, exe = self.tmp / "demo_busy.c", self.tmp / "demo-busy"
            src.write_text(BUSY_C)
            built = subprocess.run([cc, "-O0", "-g", "-fno-omit-frame-pointer", "-o", str(exe), str(src), "-lm"],
                                   capture_output=True)
            argv = [str(exe), "120"] if built.returncode == 0 else [sys.executable, "-c", PY_BUSY]
        else:
            argv = [sys.executable, "-c", PY_BUSY]
        self.busy = subprocess.Popen(self._as_user(argv), stdin=subprocess.DEVNULL, cwd="/", start_new_session=True)
        what = "a C busy loop (demo_work -> demo_checksum, demo_transform)" if argv[0].endswith("demo-busy") \
            else "a Python busy loop"
        return self.busy.pid, what

    def stop(self) -> None:
        if self.busy is not None and self.busy.poll() is None:
            os.kill(self.busy.pid, signal.SIGKILL)
        if self.busy is not None:
            self.busy.wait()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def frontend_log(self) -> str:
        self.log.seek(0)
        return self.log.read()

    # ------------------------------------------------------------ the MCP session

    async def run(self, busy_pid: int) -> int:
        from mcp import Client
        from mcp.client.stdio import StdioServerParameters, stdio_client

        argv = self._as_user([str(FRONTEND)] + (["--broker-socket", self.socket] if self.socket else []))
        env = {"LANG": "C.UTF-8", "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
        if self.user is not None:
            env.update(HOME=self.user.pw_dir or "/", USER=self.user.pw_name, LOGNAME=self.user.pw_name)
        params = StdioServerParameters(command=argv[0], args=argv[1:], env=env, cwd="/")
        async with Client(stdio_client(params, errlog=self.log), read_timeout_seconds=180) as client:
            info = await client.call_tool("perf_info", {})
            report_info(info)
            say("\n== perf_triage mode=quick: why is this machine slow?")
            triage = await client.call_tool("perf_triage", {"mode": "quick"})
            if triage.is_error:
                report_error(triage.structured_content)
            else:
                report_triage(triage.structured_content["data"], busy_pid)
            say(f"\n== perf_cpu_profile: 5 s of pid {busy_pid}")

            async def progress(value: float, total: float | None, message: str | None) -> None:
                print(f"   {value:4.0f}/{total or 0:.0f} s  {message or ''}", flush=True)

            prof = await client.call_tool("perf_cpu_profile", {"pid": busy_pid, "duration_s": 5},
                                          progress_callback=progress)
            if prof.is_error:
                return report_error(prof.structured_content)
            files = await save_artifacts(client, prof.structured_content["data"])
            report_profile(prof.structured_content, files)
        return 0


def report_info(result: Any) -> None:
    sc = result.structured_content
    say("== perf_info")
    if result.is_error:
        report_error(sc)
        return
    text = result.content[0].text.splitlines()
    for line in text:
        say(f"   {line}")


def report_triage(d: dict[str, Any], busy_pid: int) -> None:
    """The triage's first root causes: what an agent reads before its next call."""
    wrap = {"width": 100, "subsequent_indent": "       ", "break_long_words": False, "break_on_hyphens": False}
    say(textwrap.fill(d["summary"], initial_indent="   ", **wrap))
    for i, rc in enumerate(d["root_causes"][:3], 1):
        c = rc["culprit"]
        who = ", ".join(f"{k} {v}" for k, v in c.items() if k != "kind" and v not in (None, ""))
        say(textwrap.fill(f"{i}. [{rc['severity']}, confidence {rc['confidence']}] {rc['title']}",
                          initial_indent="   ", **wrap))
        say(textwrap.fill(f"culprit: {c['kind']} {who}", initial_indent="       ", **wrap))
        if rc.get("next"):
            say(f"       next: {rc['next']['tool']} {rc['next']['arguments']}")
    named = any(rc["culprit"].get("pid") == busy_pid for rc in d["root_causes"])
    say(f"   the busy process (pid {busy_pid}) is {'named' if named else 'NOT named'} as a culprit"
        + ("" if named else " (another load on this machine may rank first)"))
    for spot in d["blind_spots"][:2]:
        say(textwrap.fill(f"not seen: {spot}", initial_indent="   ", **wrap))


def report_error(sc: dict[str, Any]) -> int:
    err = sc["error"]
    say(f"   {err['code']}: {err['message']}")
    say(textwrap.fill(f"What to do: {err['suggestion']}", width=100, initial_indent="   ", subsequent_indent="   ",
                      break_long_words=False, break_on_hyphens=False))
    return 3 if err["code"] in EXPECTED_UNPRIVILEGED else 1


async def save_artifacts(client: Any, data: dict[str, Any]) -> dict[str, Path]:
    OUT.mkdir(exist_ok=True)
    files: dict[str, Path] = {}
    for art in data["artifacts"]:
        if art["name"] not in ("flamegraph.svg", "stacks.folded"):
            continue
        contents = (await client.read_resource(art["uri"])).contents[0]
        path = OUT / art["name"]
        path.write_text(contents.text)
        files[art["name"]] = path
    owner = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if os.geteuid() == 0 and all(owner):
        for p in [OUT, *files.values()]:
            os.chown(p, int(owner[0]), int(owner[1]))  # type: ignore[arg-type]
    return files


def report_profile(sc: dict[str, Any], files: dict[str, Path]) -> None:
    d = sc["data"]
    say(f"\n== Report: {d['target']}, {d['samples']} samples, {d['method']}")
    say("Headline findings:")
    for f in d["findings"]:
        say(f"   [{f['severity']}] {f['title']}")
        say(textwrap.fill(f["suggestion"], width=100, initial_indent="       ", subsequent_indent="       ",
                          break_long_words=False, break_on_hyphens=False))
    say("Top functions:      self%   total%   function [module]")
    for f in d["top_functions"][:8]:
        module = f["module"] if f["module"].startswith("[") else f"[{f['module']}]"
        say(f"                  {f['self_pct']:6.2f}   {f['total_pct']:6.2f}   {f['function']} {module}")
    if d["hottest_stacks"]:
        s = d["hottest_stacks"][0]
        say(f"Hottest stack ({s['pct']:.1f}%): {' -> '.join(s['stack'])}")
    for w in sc["warnings"]:
        say(f"Warning: {w}")
    say("Artifacts (also MCP resources for 30 minutes):")
    for name, path in files.items():
        say(f"   {name:16s} {path}")
    if "flamegraph.svg" in files:
        say(f"Open the flame graph in a browser: file://{files['flamegraph.svg']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker-socket", help="the broker's socket (root mode)")
    ap.add_argument("--user", default="perfmcp-granted", help="run the frontend as this user (root mode)")
    ap.add_argument("--unprivileged", action="store_true", help="run as yourself, without starting a broker")
    args = ap.parse_args()
    if not FRONTEND.exists():
        say(f"demo: {FRONTEND} is missing; run `make venv` (or `make demo` as root)")
        return 2
    if args.unprivileged:
        user = None
        socket = args.broker_socket
    else:
        if os.geteuid() != 0:
            say("demo: without --unprivileged the demo must run as root (it runs the frontend as --user)")
            return 2
        user, socket = args.user, args.broker_socket
    import trio

    demo = Demo(socket, user)
    try:
        pid, what = demo.start_busy()
        who = f"as {user}" if user else "as you"
        say(f"demo: started {what} {who}: pid {pid}")
        say(f"demo: frontend {FRONTEND} {who}, broker {socket or 'at the default socket'}\n")
        rc = trio.run(demo.run, pid)
        if rc == 3 and args.unprivileged:
            say(textwrap.dedent("""
                To profile, install and start the root broker (once, as root):
                    sudo make demo                                  # everything, on a private socket
                    sudo perf-mcp-broker --socket /run/perf-mcp/broker.sock   # or the systemd units in packaging/
                and grant yourself the perf-mcp actions:
                    sudo install -m 0644 polkit/50-perf-mcp.rules /etc/polkit-1/rules.d/
                    sudo usermod -aG perf-mcp $USER                 # then log in again
                Or run the MCP server as `sudo perf-mcp`, which keeps a root broker child and serves as nobody."""))
            return 0
        return rc
    except Exception as exc:
        log = demo.frontend_log()
        say(f"demo: failed: {type(exc).__name__}: {exc}")
        if log:
            say("--- frontend stderr ---\n" + log[-4000:])
        return 1
    finally:
        demo.stop()
        say("\ndemo: stopped the busy process and removed its temp dir")


if __name__ == "__main__":
    sys.exit(main())
