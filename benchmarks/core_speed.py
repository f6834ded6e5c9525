"""Issue 16's measurements of the one sampling core, side by side in one run, with the machine's load noted.

    .venv/bin/python benchmarks/core_speed.py            # about 5-8 minutes on 2 cores
    .venv/bin/python benchmarks/core_speed.py --quick    # smoke run, results to a temp dir

What is measured (every number says what it is in the results file):
1. CLI start-up: wall time of `bayescale --help`, `bayescale --version` and `bayescale laws` in fresh
   processes (median of 3).
2. `bayescale fit --example chinchilla` (Student-t, 4 x 1000 + 1000, 245 runs) end to end in a fresh process,
   with an empty compilation cache and again with that cache warm.
3. In-process warm fits: `bs.fit` of the 240 Besiroglu runs (Student-t, 4 x 1000 + 1000) three times after
   a first, compiling fit, then once with 500 draws (same compiled programs: the draw count is not compiled
   in; only the predictive draws, a small program, see a new shape).
4. A catalogue law's first fit in a fresh process with an empty cache: each compiled program's compile time
   (JAX's own "Finished XLA compilation" log records), and the fit's wall time.
5. Batch against loop: `fit_batch` of `--batch` simulated Chinchilla data sets (50 runs, 4 x 500 + 500) timed
   after a compiling call, against `fit()` in a loop over `--loop` of them (warm, extrapolated per fit).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DATA = HERE.parent / "bayescale" / "example_data" / "chinchilla_fig4.csv"
BAYESCALE = str(Path(sys.executable).with_name("bayescale"))


def load() -> float:
    return os.getloadavg()[0]


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    elapsed = time.perf_counter() - t0
    if done.returncode not in (0, 3):
        raise RuntimeError(f"{cmd} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return elapsed, done


def cli_startup() -> dict:
    out = {}
    for verb in (["--help"], ["--version"], ["laws"]):
        times = [timed([BAYESCALE, *verb])[0] for _ in range(3)]
        out[" ".join(verb)] = statistics.median(times)
    return out


def cli_fit(cache: str, draws: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [BAYESCALE, "fit", "--example", "chinchilla", "--likelihood", "student_t", "--draws", str(draws),
               "--warmup", str(warmup), "--out", f"{tmp}/fit.nc", "--json", "--retries", "0"]
        cold, _ = timed(cmd, {"BAYESCALE_CACHE_DIR": cache})
        warm, done = timed(cmd, {"BAYESCALE_CACHE_DIR": cache})
    return {"empty_cache_s": cold, "warm_cache_s": warm, "converged": json.loads(done.stdout)["converged"]}


def child_in_process(draws: int, warmup: int) -> dict:
    import warnings

    import pandas as pd

    import bayescale as bs

    table = pd.read_csv(DATA).sort_values("loss").iloc[:-5]
    kwargs = dict(columns={"N": "Model Size", "C": "Training FLOP"}, likelihood="student_t", num_warmup=warmup,
                  retries=0)
    out = {"fits_s": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        bs.fit(table, "chinchilla", num_samples=draws, seed=0, **kwargs)
        out["first_fit_s"] = time.perf_counter() - t0
        for seed in (1, 2, 3):
            t0 = time.perf_counter()
            fit = bs.fit(table, "chinchilla", num_samples=draws, seed=seed, **kwargs)
            out["fits_s"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        bs.fit(table, "chinchilla", num_samples=draws // 2, seed=4, **kwargs)
        out["half_draws_fit_s"] = time.perf_counter() - t0
        # Chains split over the devices: its first (compiling) fit, then warm fits.
        parallel = bs.SamplerSettings(num_warmup=warmup, num_samples=draws, chain_method="parallel")
        pkwargs = {k: v for k, v in kwargs.items() if k != "num_warmup"}
        t0 = time.perf_counter()
        bs.fit(table, "chinchilla", settings=parallel, seed=0, **pkwargs)
        out["parallel_first_fit_s"] = time.perf_counter() - t0
        out["parallel_fits_s"] = []
        for seed in (1, 2, 3):
            t0 = time.perf_counter()
            bs.fit(table, "chinchilla", settings=parallel, seed=seed, **pkwargs)
            out["parallel_fits_s"].append(time.perf_counter() - t0)
        out["parallel_devices"] = bs.inference.chain_devices(parallel, batched=False)
    law = fit.diagnostics.table.loc[["E", "A", "B", "alpha", "beta"]]
    out["min_ess_bulk"] = float(law.ess_bulk.min())
    out["ess_per_s"] = out["min_ess_bulk"] / statistics.median(out["fits_s"])
    out["chain_devices"] = bs.inference.chain_devices(fit.settings, batched=False)
    return out


def child_new_law(law: str, draws: int, warmup: int) -> dict:
    import logging
    import warnings

    import numpy as np
    import pandas as pd

    records: list[tuple[str, float]] = []

    class Compiles(logging.Handler):
        def emit(self, record):
            match = re.search(r"Finished XLA compilation of (\S+) in ([0-9.e-]+) sec", record.getMessage())
            if match:
                records.append((match.group(1), float(match.group(2))))

    import jax

    jax.config.update("jax_log_compiles", True)
    # One handler on JAX's root logger (its module loggers propagate to it): each compilation counted once.
    logging.getLogger("jax").addHandler(Compiles())
    logging.getLogger("jax").setLevel(logging.DEBUG)
    import bayescale as bs

    rng = np.random.default_rng(0)
    N = np.exp(rng.uniform(np.log(1e7), np.log(1e9), 40))
    D = 20 * N * np.exp(rng.uniform(-1, 1, 40))
    C = 6 * N * D
    loss = (1.7 + (C / 1e17) ** -0.05) * np.exp(0.01 * rng.standard_normal(40))
    table = pd.DataFrame({"C": C, "loss": loss})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        bs.fit(table, law, num_samples=draws, num_warmup=warmup, retries=0)
        wall = time.perf_counter() - t0
    big = sorted(((n, s) for n, s in records if s > 0.05), key=lambda r: -r[1])
    return {"law": law, "fit_s": wall, "compile_total_s": sum(s for _, s in records),
            "compiles": len(records), "programs_over_50ms": [{"program": n, "s": s} for n, s in big]}


def child_batch_vs_loop(size: int, loop: int) -> dict:
    import warnings

    import bayescale as bs
    from bayescale.batch import fit_batch

    sys.path.insert(0, str(HERE.parent / "tests"))
    from conftest import simulate_chinchilla

    law = bs.get_law("chinchilla")
    runs = [bs.runs_from_table(simulate_chinchilla(num_runs=50, seed=i), law) for i in range(size)]
    settings = bs.SamplerSettings(num_warmup=500, num_samples=500)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        fit_batch(runs[:size], law, settings=settings, seeds=0, retries=0, discrepancy=None)
        out["batch_first_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        batch = fit_batch(runs[:size], law, settings=settings, seeds=1, retries=0, discrepancy=None)
        out["batch_s"] = time.perf_counter() - t0
        # The same batch vmapped ("vectorized", the GPU default), on a tenth of the data sets: lockstep NUTS.
        few = max(2, size // 10)
        t0 = time.perf_counter()
        fit_batch(runs[:few], law, settings=settings, seeds=0, retries=0, discrepancy=None, batch_method="vectorized")
        out["vectorized_first_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        fit_batch(runs[:few], law, settings=settings, seeds=1, retries=0, discrepancy=None, batch_method="vectorized")
        out["vectorized_per_fit_s"] = (time.perf_counter() - t0) / few
        out["vectorized_size"] = few
        bs.fit(runs[0], law, settings=settings, seed=0, retries=0, discrepancy=None, misfit_checks=False)
        t0 = time.perf_counter()
        for i in range(loop):
            bs.fit(runs[i], law, settings=settings, seed=i, retries=0, discrepancy=None, misfit_checks=False)
        out["loop_per_fit_s"] = (time.perf_counter() - t0) / loop
    out.update(size=size, loop=loop, batch_per_fit_s=out["batch_s"] / size,
               speedup=out["loop_per_fit_s"] / (out["batch_s"] / size), converged=int(batch.converged.sum()))
    return out


def child(kind: str, args) -> dict:
    if kind == "in_process":
        return child_in_process(args.draws, args.warmup)
    if kind == "new_law":
        return child_new_law(args.new_law, args.draws, args.warmup)
    if kind == "batch":
        return child_batch_vs_loop(args.batch, args.loop)
    raise ValueError(kind)


def run_child(kind: str, args, cache: str) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--draws", str(args.draws), "--warmup", str(args.warmup),
           "--batch", str(args.batch), "--loop", str(args.loop), "--new-law", args.new_law]
    _, done = timed(cmd, {"BAYESCALE_CACHE_DIR": cache})
    return json.loads(done.stdout.strip().splitlines()[-1])


def write(results: dict, out: Path) -> None:
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    m, c, p, n, b = (results[k] for k in ("machine", "cli", "in_process", "new_law", "batch"))
    lines = [
        "# The one sampling core: speed (issue 16)", "",
        f"Written by `benchmarks/core_speed.py`; numbers in `{out.name}.json`.", "",
        "## Machine",
        f"- {m['date']}, total {m['total_s']:.0f} s; {m['cpu']}, {m['cores']} cores; Python {m['python']}",
        f"- Load average (1 min) before / after: {m['load_before']:.2f} / {m['load_after']:.2f}"
        + (" (**busy machine: timings contaminated**)" if max(m['load_before'], m['load_after']) > m['cores'] / 2 else ""),
        "", "## Against the issue's targets", "| target | measured | met |", "|---|---|---|",
        f"| in-process warm Chinchilla fit (4 x 1000 + 1000, 240 runs, student_t) <= 1.0 s | median "
        f"{statistics.median(p['fits_s']):.2f} s ({', '.join(f'{t:.2f}' for t in p['fits_s'])}) | "
        f"{'yes' if statistics.median(p['fits_s']) <= 1.0 else '**no**'} |",
        f"| fresh-process `bayescale fit --example chinchilla`: <= 4 s warm cache, <= 20 s empty | "
        f"{c['fit']['warm_cache_s']:.1f} s / {c['fit']['empty_cache_s']:.1f} s | "
        f"{'yes' if c['fit']['warm_cache_s'] <= 4 else '**no**'} / {'yes' if c['fit']['empty_cache_s'] <= 20 else '**no**'} |",
        f"| `bayescale --help` and `bayescale laws` <= 0.5 s | {c['startup']['--help']:.2f} s / "
        f"{c['startup']['laws']:.2f} s (`--version` {c['startup']['--version']:.2f} s) | "
        f"{'yes' if c['startup']['--help'] <= 0.5 else '**no**'} / {'yes' if c['startup']['laws'] <= 0.5 else '**no**'} |",
        f"| a new catalogue law's first fit: compile per program, total < 15 s | law `{n['law']}`: {n['compiles']} "
        f"compilations, {n['compile_total_s']:.1f} s in all; fit {n['fit_s']:.1f} s | "
        f"{'yes' if n['compile_total_s'] < 15 else '**no**'} |",
        f"| batch of {b['size']} >= 10x the loop over fit() | batch {b['batch_per_fit_s']:.3f} s per data set against "
        f"{b['loop_per_fit_s']:.2f} s per fit() in the loop: {b['speedup']:.1f}x | {'yes' if b['speedup'] >= 10 else '**no**'} |",
        "", "## Details",
        f"- In-process: first (compiling) fit {p['first_fit_s']:.1f} s; the same fit with half the draws {p['half_draws_fit_s']:.2f} s "
        f"(no recompilation of the sampler); min bulk ESS of the law parameters {p['min_ess_bulk']:.0f}, "
        f"{p['ess_per_s']:.0f} ESS/s in-process; chains split over {p['chain_devices']} device(s) (the default, "
        f"sequential chains).",
        f"- `chain_method=\"parallel\"` (chains split over {p['parallel_devices']} devices): first fit "
        f"{p['parallel_first_fit_s']:.1f} s (default: {p['first_fit_s']:.1f} s), warm fits "
        f"{', '.join(f'{t:.2f}' for t in p['parallel_fits_s'])} s.",
        f"- CLI fit converged: {c['fit']['converged']}.",
        "- Compile time per program, new law (over 50 ms): "
        + "; ".join(f"{r['program']} {r['s']:.1f} s" for r in n["programs_over_50ms"]),
        f"- Batch (data sets one after another on each of the devices, the CPU default): {b['size']} data sets in "
        f"{b['batch_s']:.1f} s after a first call of {b['batch_first_s']:.1f} s that compiled ({b['converged']} "
        f"converged, no retries); loop: {b['loop']} warm fit() calls (misfit checks off), extrapolated per fit. "
        f"Vmapped (\"vectorized\", the GPU default), {b['vectorized_size']} data sets: first call "
        f"{b['vectorized_first_s']:.1f} s, then {b['vectorized_per_fit_s']:.3f} s per data set.",
        "- Not measured here: PyMC + nutpie ESS/s (see `fit_speed.py`; PyMC is not in the dev extras), GPU "
        "throughput (`batch_scaling.py` runs unchanged on a GPU machine; none was lent to this session).",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--loop", type=int, default=10)
    parser.add_argument("--new-law", default="compute_power_law")
    parser.add_argument("--out", default=str(RESULTS / "core_speed"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    if args.quick:
        args.draws, args.warmup, args.batch, args.loop = 200, 200, 8, 2
        args.out = str(Path(tempfile.mkdtemp()) / "core_speed")
    start, load_before = time.perf_counter(), load()
    with tempfile.TemporaryDirectory() as cache_root:
        results = {
            "cli": {"startup": cli_startup(), "fit": cli_fit(f"{cache_root}/cli", args.draws, args.warmup)},
            "in_process": run_child("in_process", args, f"{cache_root}/in_process"),
            "new_law": run_child("new_law", args, f"{cache_root}/new_law"),
            "batch": run_child("batch", args, f"{cache_root}/batch"),
        }
    results["machine"] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "total_s": time.perf_counter() - start,
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
        "load_before": load_before, "load_after": load(), "settings": vars(args),
    }
    write(results, Path(args.out))
    print(Path(args.out).with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
