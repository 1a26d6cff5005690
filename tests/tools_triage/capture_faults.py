"""Start a fault of bench/triage/faults.py and capture the triage's Observations under it
(capture_observations.py as the workload user, in the fault's network namespace if it has one).
By hand, as root:  .venv/bin/python tests/tools_triage/capture_faults.py SOCKET FAULT [FAULT...]
writes tests/fixtures/triage/observations/FAULT.json and prints the fault's truth."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1] / "bench"))

import helpers  # noqa: E402
from triage import faults  # noqa: E402

OUT = HERE.parent / "fixtures" / "triage" / "observations"


def main(socket: str, names: list[str]) -> None:
    users = helpers.lookup_test_users()
    with faults.Env() as env:
        for name in names:
            with getattr(faults, name)(env, 60) as act:
                time.sleep(6)
                argv = helpers.as_user_argv(users.granted, [helpers.VENV_BIN / "python", HERE / "capture_observations.py",
                                                            socket, "standard", name]
                                            + ([str(act.pid)] if act.pid else []))
                if act.netns:
                    argv = ["/usr/sbin/ip", "netns", "exec", act.netns, *argv]
                with open(OUT / f"{name}.json", "wb") as out:
                    subprocess.run(argv, stdout=out, stderr=subprocess.DEVNULL, env=helpers.user_env(users.granted),
                                   cwd="/", check=True, timeout=120)
                print(name, act.detail, [t.describe() for t in act.truths])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
