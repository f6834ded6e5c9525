"""Throughput of the vectorised batch engine against a Python loop over fit(), on simulated Chinchilla data.

    .venv/bin/python benchmarks/batch_scaling.py --sizes 10 100 1000 --loop 20

Data set i: 50 runs simulated from Besiroglu et al.'s parameters (tests/conftest.py's simulator, seed i).
NUTS: 4 chains x `--warmup` warm-up + `--draws` draws, dense mass, MAP from 32 starts, as fit() defaults.
For each size the batch (`bayescale.batch.fit_batch`, vectorised diagnostics included) is timed twice: the
first call includes compilation (or a persistent-cache load), the second is the steady state that is
reported as throughput; sizes from `--time-once-from` up are timed by their first call only (compilation,
tens of seconds, is then a few per cent of the call and counts against the batch). The loop times `--loop` fits of fit() (warm: one untimed fit first) and
extrapolates per fit. Memory: peak resident set (resource.getrusage ru_maxrss) after each step. Results go to
benchmarks/results/batch_scaling.{json,md} with the machine noted. Wall-clock times on a shared machine
are contaminated by other processes: the CPU time of this process is recorded next to each wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import warnings
from pathlib import Path

import bayescale as bs  # noqa: I001  (before other JAX use)
import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import bayescale.discrepancy  # noqa: E402
import bayescale.retries  # noqa: E402
import bayescale.saturating  # noqa: E402

# tests/conftest.py switches the package defaults off for the test suite (no retries, no discrepancy walk,
# no level-and-slope coordinates);
# put them back after importing its simulator. Results written before 2026-12-07 were measured without them.
PACKAGE_DEFAULTS = (bayescale.retries.DEFAULT_POLICY, bayescale.discrepancy.DEFAULT_DISCREPANCY,
                    bayescale.saturating.ENABLED)
from conftest import simulate_chinchilla  # noqa: E402

(bayescale.retries.DEFAULT_POLICY, bayescale.discrepancy.DEFAULT_DISCREPANCY,
 bayescale.saturating.ENABLED) = PACKAGE_DEFAULTS

from bayescale.batch import fit_batch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--loop", type=int, default=20, help="fits of the single-fit loop (extrapolated)")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", default=str(RESULTS / "batch_scaling"))
    parser.add_argument("--chunk-size", type=int, default=0,
                        help="data sets per compiled call (fit_batch's chunk_size); 0: the whole batch in one call")
    parser.add_argument("--time-once-from", type=int, default=1000,
                        help="sizes from this one up are timed by one call only (compile included)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", bs.ConvergenceWarning)
    law = bs.get_law("chinchilla")
    settings = bs.SamplerSettings(num_warmup=args.warmup, num_samples=args.draws, num_chains=4)
    max_size = max(args.sizes + [args.loop])
    runs = [bs.runs_from_table(simulate_chinchilla(num_runs=args.runs, seed=i), law) for i in range(max_size)]

    record = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "jax_devices": [str(d) for d in jax.devices()], "load_average_at_start": os.getloadavg()},
        "settings": {"chains": 4, "warmup": args.warmup, "draws": args.draws, "runs_per_data_set": args.runs,
                     "map_starts": 32, "chunk_size": args.chunk_size or None},
        "loop": None,
        "batch": [],
    }

    if args.loop:
        bs.fit(runs[0], law, settings=settings, seed=0)  # compile (or load from the persistent cache)
        _, wall, cpu = timed(lambda: [bs.fit(r, law, settings=settings, seed=i)
                                      for i, r in enumerate(runs[:args.loop])])
        record["loop"] = {"fits": args.loop, "wall_s": wall, "cpu_s": cpu, "fits_per_s": args.loop / wall,
                          "peak_rss_mb": peak_rss_mb(), "note": "extrapolated per fit from this many fits"}
        print(f"loop: {args.loop} fits in {wall:.1f} s ({args.loop / wall:.3f} fits/s)", flush=True)

    for size in sorted(args.sizes):
        batch = runs[:size]
        first, wall0, cpu0 = timed(lambda: fit_batch(batch, law, settings=settings, seeds=0, chunk_size=args.chunk_size or None))
        if size >= args.time_once_from:  # compilation is a small share of a long call: one call is the measurement
            result, wall, cpu = first, wall0, cpu0
        else:
            del first
            result, wall, cpu = timed(lambda: fit_batch(batch, law, settings=settings, seeds=0, chunk_size=args.chunk_size or None))
        row = {"data_sets": size, "first_call_wall_s": wall0, "wall_s": wall, "cpu_s": cpu,
               "timed_calls": 1 if size >= args.time_once_from else 2,
               "posteriors_per_s": size / wall, "converged_fraction": float(result.converged.mean()),
               "peak_rss_mb": peak_rss_mb(), "load_average": os.getloadavg()}
        if record["loop"]:
            row["speedup_vs_loop"] = row["posteriors_per_s"] / record["loop"]["fits_per_s"]
        record["batch"].append(row)
        print(json.dumps(row), flush=True)
        del result
        write(record, Path(args.out))  # after every size: a long run that is stopped keeps what it measured


def write(record, out: Path):
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    lines = [f"# Batch scaling ({record['command']})", "",
             f"Machine: {record['machine']['platform']}, {record['machine']['cpus']} CPUs, "
             f"JAX devices {record['machine']['jax_devices']}; load average at start "
             f"{record['machine']['load_average_at_start']} (shared machine: wall times are contaminated).",
             f"NUTS: {record['settings']}.", ""]
    if record["loop"]:
        loop = record["loop"]
        lines.append(f"Python loop over fit(): {loop['fits']} fits, {loop['wall_s']:.1f} s wall "
                     f"({loop['fits_per_s']:.3f} fits/s, extrapolated per fit).")
        lines.append("")
    lines += ["| data sets | first call s | steady s | CPU s | posteriors/s | speed-up vs loop | converged | peak RSS MB |",
              "|---|---|---|---|---|---|---|---|"]
    for r in record["batch"]:
        lines.append(f"| {r['data_sets']} | {r['first_call_wall_s']:.1f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                     f"{r['posteriors_per_s']:.3f} | {r.get('speedup_vs_loop', float('nan')):.1f} | "
                     f"{r['converged_fraction']:.2f} | {r['peak_rss_mb']:.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
