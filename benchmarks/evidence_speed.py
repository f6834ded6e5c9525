"""Time per evidence estimate for the Chinchilla law on the Chinchilla data (245 runs).

Fits the law once (NUTS, 4 chains x 1000 + 1000), then times each estimator: bridge sampling on the fit's
draws (primary), Laplace (cross-check), the widened-prior reweighting, each first call (compile included)
and warm (median of repeats). Also reports the spread of the bridge estimate over proposal seeds next to
its reported error. Writes benchmarks/results/evidence_speed.json and .md with the machine noted.

    .venv/bin/python benchmarks/evidence_speed.py [--draws 1000] [--repeats 5]
"""

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import bayescale as bs
import jax
import numpy as np
from bayescale.evidence import (bridge_sampling, evidence_report, fit_model_inputs, fit_unconstrained_draws, laplace,
                                prior_sensitivity)

RESULTS = Path(__file__).parent / "results"


def timed(fn, repeats):
    start = time.perf_counter()
    first = fn()
    first_s = time.perf_counter() - start
    warm = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - start)
    return first, first_s, float(np.median(warm))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--likelihood", default="normal")
    args = parser.parse_args()

    table = bs.load_example("chinchilla")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)
        fit = bs.fit(table, "chinchilla", columns={"N": "Model Size", "C": "Training FLOP"},
                     likelihood=args.likelihood, num_warmup=args.draws, num_samples=args.draws, seed=0)
    fit_s = time.perf_counter() - start

    target, posterior = fit_unconstrained_draws(fit)
    model, model_args, model_kwargs = fit_model_inputs(fit)
    key = jax.random.PRNGKey(0)
    bridge, bridge_first, bridge_warm = timed(lambda: bridge_sampling(target, posterior, key), args.repeats)
    lap, lap_first, lap_warm = timed(lambda: laplace(model, model_args, model_kwargs, key), args.repeats)
    wide, wide_first, wide_warm = timed(lambda: prior_sensitivity(fit, bridge, posterior, target)[0], args.repeats)
    report_s = timed(lambda: evidence_report(fit), 1)[2]
    spread = [bridge_sampling(target, posterior, jax.random.PRNGKey(s)).log_z for s in range(10)]

    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "load_average_1min_at_end": os.getloadavg()[0],
                    "note": "2-core machine shared with other engineers' jobs while measured: times are upper bounds",
                    "jax": jax.__version__, "backend": jax.default_backend()},
        "data": "Chinchilla Fig. 4, 245 runs", "law": "chinchilla", "likelihood": args.likelihood,
        "fit": {"draws": f"4 x {args.draws} + {args.draws}", "seconds": fit_s, "converged": fit.converged},
        "bridge": {"log_z": bridge.log_z, "error": bridge.error, "first_call_s": bridge_first,
                   "warm_s": bridge_warm, "log_z_over_10_proposal_seeds_sd": float(np.std(spread)),
                   **{k: v for k, v in bridge.details.items()}},
        "laplace": {"log_z": lap.log_z, "first_call_s": lap_first, "warm_s": lap_warm},
        "widened_priors": {"log_z": wide.log_z, "error": wide.error, "change": wide.log_z - bridge.log_z,
                           "first_call_s": wide_first, "warm_s": wide_warm},
        "evidence_report_warm_s": report_s,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "evidence_speed.json").write_text(json.dumps(result, indent=2))
    md = [
        "# Evidence speed: Chinchilla law on the Chinchilla data (245 runs)",
        "",
        f"Machine: {result['machine']['platform']}, {result['machine']['cpu_count']} CPUs, jax "
        f"{jax.__version__} on {jax.default_backend()}; {result['machine']['note']} (1-min load average at the "
        f"end {result['machine']['load_average_1min_at_end']:.1f}).",
        f"Fit: NUTS 4 x {args.draws} + {args.draws}, {args.likelihood} likelihood, {fit_s:.1f} s, "
        f"converged={fit.converged}.",
        "",
        "| estimator | log Z | reported error | first call (s, compile incl.) | warm (s) |",
        "|---|---|---|---|---|",
        f"| bridge sampling (primary) | {bridge.log_z:.3f} | {bridge.error:.3f} | {bridge_first:.2f} | {bridge_warm:.3f} |",
        f"| Laplace (cross-check) | {lap.log_z:.3f} | - | {lap_first:.2f} | {lap_warm:.3f} |",
        f"| widened priors (x2 spreads, reweighted) | {wide.log_z:.3f} | {wide.error:.3f} | {wide_first:.2f} | {wide_warm:.3f} |",
        "",
        f"Bridge estimate over 10 proposal seeds: sd {np.std(spread):.3f} nats (reported error {bridge.error:.3f}).",
        f"Whole `evidence_report` (bridge + Laplace + widened priors), warm: {report_s:.2f} s.",
        "",
        "Command: `.venv/bin/python benchmarks/evidence_speed.py`",
    ]
    (RESULTS / "evidence_speed.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
