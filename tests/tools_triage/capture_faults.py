"""Start a scenario of bench/triage/scenarios.py and capture the triage's Observations under it
(capture_observations.py as the caller, in the fault's network namespace if it has one), the way
the benchmark asks: the fault's pid passed only where the scenario passes it (pid_hint).
By hand, as root (a broker is started here and stopped by its PID at the end):

    .venv/bin/python tests/tools_triage/capture_faults.py [--mode M] [--user granted|denied] SCENARIO...

(a SCENARIO may join scenarios' faults with '+', as memory_pressure+disk_saturation, to start them at once)

writes tests/fixtures/triage/observations/bench.SCENARIO[.MODE][.USER].json (mode standard and
user granted leave their part out) and prints the fault's truth (pids, cgroup, device) for the test."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1] / "bench"))

import helpers  # noqa: E402
from triage import faults  # noqa: E402
from triage.scenarios import SCENARIOS, Scenario  # noqa: E402

OUT = HERE.parent / "fixtures" / "triage" / "observations"
LIFE_S = {"quick": 60, "standard": 60, "deep": 120}


def fixture_name(scenario: str, mode: str, user: str) -> str:
    return "bench." + scenario + ("" if mode == "standard" else f".{mode}") + ("" if user == "granted" else f".{user}")


def scenario(name: str) -> Scenario:
    """A scenario of the benchmark, or faults of it at once ("memory_pressure+disk_saturation")."""
    if name in SCENARIOS:
        return SCENARIOS[name]
    parts = [SCENARIOS[n] for n in name.split("+")]
    return Scenario(name, faults.combo(*(p.fault for p in parts)), max(p.settle_s for p in parts))


def main(mode: str, user_name: str, names: list[str]) -> None:
    users = helpers.lookup_test_users()
    user = users.granted if user_name == "granted" else users.denied
    workdir = helpers.make_shared_tmpdir("pmcp-capture-")
    broker = helpers.start_broker(workdir)
    try:
        with faults.Env() as env:
            for name in names:
                sc = scenario(name)
                with sc.fault(env, LIFE_S[mode]) as act:
                    time.sleep(sc.settle_s)
                    ground = act.ground() if act.ground else ""
                    pid = act.pid if sc.pid_hint else None
                    argv = helpers.as_user_argv(user, [helpers.VENV_BIN / "python", HERE / "capture_observations.py",
                                                       broker.socket_path, mode, name]
                                                + ([str(pid)] if pid else []))
                    if act.netns:
                        argv = ["/usr/bin/nsenter", f"--net=/run/netns/{act.netns}", *argv]
                    with open(OUT / f"{fixture_name(name, mode, user_name)}.json", "wb") as out:
                        subprocess.run(argv, stdout=out, stderr=subprocess.DEVNULL, env=helpers.user_env(user),
                                       cwd="/", check=True, timeout=180)
                    print(name, mode, user_name, act.detail, [t.describe() for t in act.truths], ground)
    finally:
        print("broker:", helpers.stop_broker(broker) or "stopped")
        helpers.remove_tree(workdir)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="standard", choices=("quick", "standard", "deep"))
    p.add_argument("--user", default="granted", choices=("granted", "denied"))
    p.add_argument("scenarios", nargs="+", help="names of bench/triage/scenarios.py, or some joined by '+'")
    a = p.parse_args()
    main(a.mode, a.user, a.scenarios)
