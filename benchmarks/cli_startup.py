"""How fast the `bayescale` command answers the verbs that need no fit: `--help`, `--version`, `laws`.

Issue 16's goal: at most 0.5 s each. Each command runs in a fresh process (Python start-up and imports
counted), `--repeat` times; the median and the slowest are reported, with the machine and its load, in
benchmarks/results/cli_startup.{json,md}. `laws` reads the catalogue's JSON index (`models/catalogue.json`)
instead of importing the law modules (and JAX with them).

    python benchmarks/cli_startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
COMMANDS = (["--help"], ["--version"], ["laws"], ["laws", "--json"])
GOAL_S = 0.5


def timed(argv: list[str]) -> float:
    executable = shutil.which("bayescale")
    command = [executable, *argv] if executable else [sys.executable, "-m", "bayescale.cli", *argv]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = []
    for argv in COMMANDS:
        times = [timed(argv) for _ in range(args.repeat)]
        rows.append({"command": "bayescale " + " ".join(argv), "median_s": statistics.median(times), "max_s": max(times)})
    load_after = os.getloadavg()[0]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}"
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    (RESULTS / "cli_startup.json").write_text(json.dumps(
        {"machine": machine, "date": stamp, "load_average_1min": [load_before, load_after], "repeat": args.repeat,
         "goal_s": GOAL_S, "rows": rows}, indent=1) + "\n")
    lines = ["# CLI start-up: verbs that need no fit", "",
             f"Written by `benchmarks/cli_startup.py`. {stamp}; {machine}; load average (1 min) before / after "
             f"{load_before:.2f} / {load_after:.2f}. Each command in a fresh process, {args.repeat} times.", "",
             "| command | median (s) | slowest (s) | goal <= 0.5 s |", "|---|---|---|---|"]
    lines += [f"| `{r['command']}` | {r['median_s']:.3f} | {r['max_s']:.3f} | {'yes' if r['max_s'] <= GOAL_S else '**no**'} |"
              for r in rows]
    (RESULTS / "cli_startup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
