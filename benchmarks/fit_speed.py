"""Speed and accuracy of the Chinchilla fit: bayescale vs a Huber-loss bootstrap (scipy) vs PyMC (nutpie).

Issue 2's benchmark. Data: the Chinchilla Figure-4 runs less the five highest-loss ones (Besiroglu et al.
2024's 240 points), law L = E + A/N^alpha + B/D^beta, D = C / (6N). Measured, on one machine in one run:

1. bayescale, Student-t likelihood (nu = 4 on log loss), 4 chains x 1000 draws after 1000 warm-up, in a
   fresh process with an empty compilation cache (a new BAYESCALE_CACHE_DIR): process wall time including
   Python start, `import bayescale` (reported separately) and compilation;
2. again in a second fresh process with that cache now warm, followed by a second fit in the same process
   (compiled programs in memory);
3. ESS per second for each: the smallest bulk ESS of the five law parameters / wall time;
4. the field's practice (`huber_baseline.py`): Huber (delta = 1e-3) on log loss, scipy L-BFGS-B from a grid
   of starts, refit on 1,000 bootstrap resamples; wall time and 95% percentile intervals;
5. the same Bayesian model in PyMC (same priors, same Student-t nu = 4 on log loss, same parametrisation as
   bayescale's: log A and log B pivoted at the data's geometric-mean N and D), sampled with nutpie (PyMC's
   NUTS if nutpie is missing), 4 chains x 1000 + 1000, in a fresh process: wall time including compilation;
6. the ratios the issue asks for, and bayescale's posterior next to Besiroglu et al.'s published fit.

Every tool runs in its own child process (this script with --child), so imports and compilation are
counted. Results: benchmarks/results/fit_speed.json and .md (with the machine and its load).

    python benchmarks/fit_speed.py            # the full run (about 10 minutes on 2 cores)
    python benchmarks/fit_speed.py --quick    # smoke run: few draws and resamples, results to a temp dir
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO / "bayescale" / "example_data" / "chinchilla_fig4.csv"  # same bytes as ../shared/data/chinchilla
LAW_PARAMS = ("E", "A", "B", "alpha", "beta")
NU = 4.0

# Besiroglu et al. 2024 (arXiv:2404.10102), Huber fit on the same 240 points, 4,000-resample bootstrap.
BESIROGLU = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}
BESIROGLU_95 = {"E": (1.769, 1.871), "A": (285.0, 744.0), "B": (1042.0, 5810.0),
                "alpha": (0.317, 0.373), "beta": (0.331, 0.415)}

FULL = {"warmup": 1000, "draws": 1000, "chains": 4, "resamples": 1000, "hoffmann_starts": 200}
QUICK = {"warmup": 200, "draws": 200, "chains": 4, "resamples": 20, "hoffmann_starts": 20}


def besiroglu_runs():
    """(N, D, loss) of the 240 runs, and the table bayescale reads."""
    import pandas as pd

    table = pd.read_csv(DATA).sort_values("loss").iloc[:-5]
    N = table["Model Size"].to_numpy()
    D = table["Training FLOP"].to_numpy() / (6.0 * N)
    return N, D, table["loss"].to_numpy(), table


def posterior_summary(samples: dict) -> dict:
    """Median, 90% and 95% equal-tailed intervals of each parameter's draws."""
    import numpy as np

    out = {}
    for name, values in samples.items():
        q = np.quantile(np.asarray(values).ravel(), [0.025, 0.05, 0.5, 0.95, 0.975])
        out[name] = {"median": q[2], "q5": q[1], "q95": q[3], "q2.5": q[0], "q97.5": q[4]}
    return {name: {k: float(v) for k, v in row.items()} for name, row in out.items()}


# ---- children: each prints one JSON line, the last line of its stdout ----

def child_bayescale(settings: dict, fits: int, seed: int) -> dict:
    start = time.perf_counter()
    import bayescale as bs

    import_s = time.perf_counter() - start
    _, _, _, table = besiroglu_runs()
    runs = []
    for _ in range(fits):
        t0 = time.perf_counter()
        fit = bs.fit(
            table, "chinchilla", columns={"N": "Model Size", "C": "Training FLOP"}, likelihood="student_t",
            num_warmup=settings["warmup"], num_samples=settings["draws"], num_chains=settings["chains"], seed=seed,
        )
        fit_s = time.perf_counter() - t0
        law_rows = fit.diagnostics.table.loc[list(LAW_PARAMS)]
        runs.append({
            "fit_s": fit_s,
            "min_ess_bulk": float(law_rows.ess_bulk.min()),
            "ess_bulk": {k: float(v) for k, v in law_rows.ess_bulk.items()},
            "max_rhat": float(law_rows.rhat.max()),
            "divergences": int(fit.diagnostics.divergences),
            "converged": bool(fit.converged),
            "leapfrog_steps": int(fit.data.sample_stats["n_steps"].sum()),
        })
    return {
        "import_s": import_s,
        "fits": runs,
        "chain_method": bs.inference.chain_method(fit.settings),
        "devices": len(__import__("jax").devices()),
        "posterior": posterior_summary(bs.draws(fit, names=list(LAW_PARAMS) + ["sigma"])),
    }


def pymc_model(N, D, loss):
    """bayescale's Chinchilla model (models/chinchilla.py, models/priors.py, bayescale/likelihood.py) in PyMC,
    with the same pivoted coefficients: log A_ref = log A - alpha * mean(log N) has the prior of log A
    shifted, i.e. Normal(log 1000 - alpha * mean(log N), 3), since A ~ LogNormal(log 1000, 3)."""
    import numpy as np
    import pymc as pm

    log_n, log_d, log_loss = np.log(N), np.log(D), np.log(loss)
    ref_n, ref_d = log_n.mean(), log_d.mean()
    with pm.Model() as model:
        E = pm.Uniform("E", 0.0, float(loss.min()))
        alpha = pm.LogNormal("alpha", np.log(0.3), 0.5)
        beta = pm.LogNormal("beta", np.log(0.3), 0.5)
        log_a_ref = pm.Normal("log_A_at_ref", np.log(1000.0) - alpha * ref_n, 3.0)
        log_b_ref = pm.Normal("log_B_at_ref", np.log(1000.0) - beta * ref_d, 3.0)
        pm.Deterministic("A", pm.math.exp(log_a_ref + alpha * ref_n))
        pm.Deterministic("B", pm.math.exp(log_b_ref + beta * ref_d))
        sigma = pm.HalfNormal("sigma", 0.1)
        mean = E + pm.math.exp(log_a_ref - alpha * (log_n - ref_n)) + pm.math.exp(log_b_ref - beta * (log_d - ref_d))
        # Student-t on log loss: bayescale's exp-transformed Student-t on loss differs by the constant
        # Jacobian -sum(log loss), so the posterior is the same.
        pm.StudentT("log_loss", nu=NU, mu=pm.math.log(mean), sigma=sigma, observed=log_loss)
    return model


def child_pymc(settings: dict, seed: int) -> dict:
    start = time.perf_counter()
    import arviz as az
    import numpy as np
    import pymc as pm

    try:
        import nutpie
    except ImportError:
        nutpie = None
    import_s = time.perf_counter() - start
    N, D, loss, _ = besiroglu_runs()
    t0 = time.perf_counter()
    model = pymc_model(N, D, loss)
    if nutpie is not None:
        compiled = nutpie.compile_pymc_model(model)
        compile_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        trace = nutpie.sample(compiled, draws=settings["draws"], tune=settings["warmup"],
                              chains=settings["chains"], seed=seed, progress_bar=False)
        sampler = f"nutpie {metadata.version('nutpie')} (numba backend, default settings)"
    else:
        compile_s = 0.0  # pm.sample compiles inside; counted in sample_s
        t1 = time.perf_counter()
        trace = pm.sample(draws=settings["draws"], tune=settings["warmup"], chains=settings["chains"],
                          random_seed=seed, progressbar=False)
        sampler = f"PyMC {metadata.version('pymc')} NUTS (default settings)"
    sample_s = time.perf_counter() - t1
    ess = az.ess(trace, method="bulk", var_names=list(LAW_PARAMS))
    ess_bulk = {name: float(np.asarray(ess[name])) for name in LAW_PARAMS}
    rhat = az.rhat(trace, var_names=list(LAW_PARAMS))
    stats = trace.sample_stats
    posterior = {name: np.asarray(trace.posterior[name]) for name in list(LAW_PARAMS) + ["sigma"]}
    return {
        "sampler": sampler,
        "import_s": import_s,
        "compile_s": compile_s,
        "sample_s": sample_s,
        "min_ess_bulk": min(ess_bulk.values()),
        "ess_bulk": ess_bulk,
        "max_rhat": max(float(np.asarray(rhat[name])) for name in LAW_PARAMS),
        "divergences": int(np.asarray(stats["diverging"]).sum()),
        "leapfrog_steps": int(np.asarray(stats["n_steps"]).sum()) if "n_steps" in stats else None,
        "posterior": posterior_summary(posterior),
    }


def child_bootstrap(settings: dict, seed: int) -> dict:
    import numpy as np

    sys.path.insert(0, str(HERE))
    import huber_baseline as hb

    N, D, loss, _ = besiroglu_runs()
    starts = hb.grid_starts(hb.MODEST_GRID)
    t0 = time.perf_counter()
    point = hb.fit_huber(N, D, loss, starts)
    one_fit_s = time.perf_counter() - t0

    # Hoffmann et al.'s 4,500-start grid: a random subset, timed and extrapolated (the whole grid on 1,000
    # resamples would take most of a day), and checked to reach the same optimum as the modest grid.
    full = hb.grid_starts(hb.HOFFMANN_GRID)
    subset = full[np.random.default_rng(seed).choice(len(full), settings["hoffmann_starts"], replace=False)]
    t0 = time.perf_counter()
    hoffmann = hb.fit_huber(N, D, loss, subset)
    per_start_s = (time.perf_counter() - t0) / len(subset)

    # scipy's default tolerances, for the record: they stop early along the flat A-B direction.
    from scipy.optimize import minimize

    logs = (np.log(N), np.log(D), np.log(loss))
    loose = min((minimize(hb.huber_objective, s, args=logs, jac=True, method="L-BFGS-B") for s in starts),
                key=lambda r: r.fun)
    a, b, e, alpha, beta = loose.x
    loose_params = {"E": np.exp(e), "A": np.exp(a), "B": np.exp(b), "alpha": alpha, "beta": beta}

    t0 = time.perf_counter()
    boot = hb.bootstrap_huber(N, D, loss, starts, settings["resamples"], seed=seed)
    bootstrap_s = time.perf_counter() - t0
    intervals = {name: [float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))] for name, v in boot.items()}
    return {
        "grid": {k: [float(x) for x in v] for k, v in hb.MODEST_GRID.items()},
        "num_starts": len(starts),
        "fit_options": hb.FIT_OPTIONS,
        "delta": hb.DELTA,
        "point": point.params,
        "point_objective": point.objective,
        "one_fit_s": one_fit_s,
        "hoffmann_grid_subset": {
            "num_starts": len(subset), "of": len(full), "per_start_s": per_start_s,
            "params": hoffmann.params, "objective": hoffmann.objective,
            "one_full_grid_fit_s_extrapolated": per_start_s * len(full),
        },
        "scipy_default_tolerances": {"params": {k: float(v) for k, v in loose_params.items()},
                                     "objective": float(loose.fun)},
        "num_resamples": settings["resamples"],
        "bootstrap_s": bootstrap_s,
        "intervals_95": intervals,
    }


# ---- the parent: runs the children, writes the results ----

def run_child(kind: str, settings: dict, env: dict | None = None, **options) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--settings", json.dumps(settings)]
    for key, value in options.items():
        command += [f"--{key}", str(value)]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall_s = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"child {kind} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall_s
    return result


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    versions = {}
    for package in ("jax", "jaxlib", "numpyro", "optax", "arviz", "numpy", "scipy", "pymc", "pytensor", "nutpie", "numba"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(), "platform": platform.platform(), "versions": versions,
    }


def ratios(results: dict) -> dict:
    bayes, pymc, boot = results["bayescale"], results["pymc"], results["bootstrap"]
    cold, warm_process, in_memory = bayes["cold_process"], bayes["warm_cache_process"], bayes["in_memory_fit"]
    pymc_total = pymc["process_wall_s"]
    pymc_ess_total = pymc["min_ess_bulk"] / pymc_total
    pymc_ess_sampling = pymc["min_ess_bulk"] / pymc["sample_s"]
    return {
        "bootstrap_over_bayescale_in_memory_fit": boot["bootstrap_s"] / in_memory["wall_s"],
        "bootstrap_over_bayescale_warm_cache_fit": boot["bootstrap_s"] / warm_process["fit_s"],
        "bootstrap_over_bayescale_warm_cache_process": boot["bootstrap_s"] / warm_process["wall_s"],
        "bootstrap_over_bayescale_cold_process": boot["bootstrap_s"] / cold["wall_s"],
        "ess_per_s_bayescale_cold_process_over_pymc_process": cold["ess_per_s"] / pymc_ess_total,
        "ess_per_s_bayescale_warm_cache_process_over_pymc_process": warm_process["ess_per_s"] / pymc_ess_total,
        "ess_per_s_bayescale_in_memory_fit_over_pymc_sampling_only": in_memory["ess_per_s"] / pymc_ess_sampling,
        "goal_bootstrap_at_least_10x_warm": boot["bootstrap_s"] / warm_process["fit_s"] >= 10,
        "goal_ess_per_s_ahead_of_pymc": warm_process["ess_per_s"] / pymc_ess_total > 1,
        "goal_warm_fit_under_2s_in_memory": in_memory["wall_s"] < 2.0,
        "goal_warm_fit_under_2s_warm_cache_fit": warm_process["fit_s"] < 2.0,
    }


def run(settings: dict, seed: int) -> dict:
    load_before = os.getloadavg()
    started = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix="bayescale-cache-") as cache:
        env = {"BAYESCALE_CACHE_DIR": cache}
        print("bayescale: fresh process, empty compilation cache ...", flush=True)
        cold = run_child("bayescale", settings, env, fits=1, seed=seed)
        print("bayescale: fresh process, warm cache, then a second fit in that process ...", flush=True)
        warm = run_child("bayescale", settings, env, fits=2, seed=seed)
    bayes = {
        "settings": {**{k: settings[k] for k in ("warmup", "draws", "chains")}, "likelihood": f"student_t nu={NU}",
                     "seed": seed, "chain_method": warm["chain_method"], "host_devices": warm["devices"]},
        "cold_process": {"wall_s": cold["process_wall_s"], "import_s": cold["import_s"], **cold["fits"][0]},
        "warm_cache_process": {"wall_s": warm["process_wall_s"], "import_s": warm["import_s"], **warm["fits"][0]},
        "in_memory_fit": {"wall_s": warm["fits"][1]["fit_s"], **warm["fits"][1]},
        "posterior": warm["posterior"],
    }
    for key in ("cold_process", "warm_cache_process", "in_memory_fit"):
        bayes[key]["ess_per_s"] = bayes[key]["min_ess_bulk"] / bayes[key]["wall_s"]
    print("scipy Huber L-BFGS-B bootstrap ...", flush=True)
    boot = run_child("bootstrap", settings, seed=seed)
    print("PyMC + nutpie: fresh process, empty PyTensor compile directory ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="pytensor-") as compiledir:
        pymc = run_child("pymc", settings, {"PYTENSOR_FLAGS": f"compiledir={compiledir}"}, seed=seed)
    pymc["ess_per_s_process"] = pymc["min_ess_bulk"] / pymc["process_wall_s"]
    pymc["ess_per_s_sampling_only"] = pymc["min_ess_bulk"] / pymc["sample_s"]
    results = {
        "benchmark": "Chinchilla law on Besiroglu et al.'s 240 Chinchilla Figure-4 runs",
        "date": started.isoformat(timespec="seconds"),
        "total_s": (datetime.now(timezone.utc) - started).total_seconds(),
        "machine": machine(),
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "quick": settings is QUICK,
        "bayescale": bayes,
        "bootstrap": boot,
        "pymc": pymc,
        "besiroglu": {"point": BESIROGLU, "bootstrap_95": BESIROGLU_95, "num_resamples": 4000},
    }
    results["ratios"] = ratios(results)
    return results


# ---- the readable report ----

def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3g}"


def _interval(low: float, high: float) -> str:
    return f"{_fmt(low)} - {_fmt(high)}"


def markdown(r: dict) -> str:
    m, b, boot, pymc, q = r["machine"], r["bayescale"], r["bootstrap"], r["pymc"], r["ratios"]
    v = m["versions"]
    s = b["settings"]
    busy = max(r["load_average_before"][0], r["load_average_after"][0]) > 0.5 * m["cores"]
    yes = lambda flag: "yes" if flag else "**no**"  # noqa: E731
    lines = [
        "# Chinchilla fit: speed and accuracy" + (" (QUICK smoke run, not a measurement)" if r["quick"] else ""),
        "",
        "Written by `benchmarks/fit_speed.py`; numbers in `fit_speed.json`. Data: Besiroglu et al.'s 240 runs "
        "(Chinchilla Figure 4 less the 5 highest-loss runs); law L = E + A/N^alpha + B/D^beta.",
        "",
        "## Machine",
        f"- {r['date']}, total benchmark time {r['total_s']:.0f} s",
        f"- CPU: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; {m['platform']}",
        f"- Python {m['python']}; jax {v['jax']}, numpyro {v['numpyro']}, optax {v['optax']}, arviz {v['arviz']}, "
        f"scipy {v['scipy']}, numpy {v['numpy']}; pymc {v['pymc']}, pytensor {v['pytensor']}, nutpie {v['nutpie']}, "
        f"numba {v['numba']}",
        f"- Load average (1 min) before / after: {r['load_average_before'][0]:.2f} / {r['load_average_after'][0]:.2f}"
        + (f". **The machine was busy (load above half the core count): other jobs shared the {m['cores']} cores, "
           "so these timings are contaminated (slower than on a quiet machine) and ratios between tools run at "
           "different moments are noisy.**" if busy else ""),
        "",
        "## Goals (issue 2)",
        "| goal | measured | met |",
        "|---|---|---|",
        f"| warm fit under 2 s | in-memory warm fit {b['in_memory_fit']['wall_s']:.2f} s; warm-cache fresh "
        f"process: fit {b['warm_cache_process']['fit_s']:.2f} s | {yes(q['goal_warm_fit_under_2s_in_memory'])} "
        f"/ {yes(q['goal_warm_fit_under_2s_warm_cache_fit'])} |",
        f"| at least 10x faster than the bootstrap | bootstrap / warm-cache fit = "
        f"{q['bootstrap_over_bayescale_warm_cache_fit']:.1f}x (in-memory: "
        f"{q['bootstrap_over_bayescale_in_memory_fit']:.1f}x; whole warm-cache process: "
        f"{q['bootstrap_over_bayescale_warm_cache_process']:.1f}x; whole cold process: "
        f"{q['bootstrap_over_bayescale_cold_process']:.1f}x) | {yes(q['goal_bootstrap_at_least_10x_warm'])} |",
        f"| ahead of PyMC in ESS/s | bayescale warm-cache process / PyMC process = "
        f"{q['ess_per_s_bayescale_warm_cache_process_over_pymc_process']:.2f} (cold / PyMC process: "
        f"{q['ess_per_s_bayescale_cold_process_over_pymc_process']:.2f}; in-memory fit / PyMC sampling only: "
        f"{q['ess_per_s_bayescale_in_memory_fit_over_pymc_sampling_only']:.2f}) | "
        f"{yes(q['goal_ess_per_s_ahead_of_pymc'])} |",
        "",
        f"## Timings ({s['chains']} chains x {s['draws']} draws after {s['warmup']} warm-up)",
        "| run | wall time (s) | of which import (s) | fit / sampling (s) | min bulk ESS (5 law params) | ESS/s | "
        "max R-hat | divergences | leapfrog steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, label in (("cold_process", "bayescale, fresh process, empty compile cache"),
                       ("warm_cache_process", "bayescale, fresh process, warm compile cache"),
                       ("in_memory_fit", "bayescale, second fit in that process")):
        row = b[key]
        imp = f"{row['import_s']:.2f}" if "import_s" in row else "-"
        lines.append(f"| {label} | {row['wall_s']:.2f} | {imp} | {row['fit_s']:.2f} | {row['min_ess_bulk']:.0f} | "
                     f"{row['ess_per_s']:.0f} | {row['max_rhat']:.4f} | {row['divergences']} | {row['leapfrog_steps']} |")
    steps = pymc["leapfrog_steps"] if pymc["leapfrog_steps"] is not None else "-"
    lines += [
        f"| PyMC, {pymc['sampler']}, fresh process, empty compile dir | {pymc['process_wall_s']:.2f} | "
        f"{pymc['import_s']:.2f} | compile {pymc['compile_s']:.2f} + sample {pymc['sample_s']:.2f} | "
        f"{pymc['min_ess_bulk']:.0f} | {pymc['ess_per_s_process']:.0f} (sampling only: "
        f"{pymc['ess_per_s_sampling_only']:.0f}) | {pymc['max_rhat']:.4f} | {pymc['divergences']} | {steps} |",
        f"| scipy Huber L-BFGS-B, {boot['num_resamples']}-resample bootstrap, {boot['num_starts']} starts each | "
        f"{boot['bootstrap_s'] + boot['one_fit_s']:.1f} (bootstrap {boot['bootstrap_s']:.1f} + point fit "
        f"{boot['one_fit_s']:.2f}) | - | - | - | - | - | - | - |",
        "",
        f"bayescale: chain method `{s['chain_method']}` over {s['host_devices']} host devices, likelihood "
        f"{s['likelihood']}, seed {s['seed']}. Process wall times include Python start-up, imports, data loading, "
        "compilation, MAP, sampling, predictive draws and diagnostics; the in-memory fit is the `bayescale.fit` "
        "call alone. PyMC uses the same model and parametrisation (log A, log B pivoted at the data's "
        "geometric-mean N, D) with nutpie's default settings (diagonal mass matrix, target acceptance 0.8); "
        "bayescale uses a dense mass matrix and target acceptance 0.95.",
        "",
        "## Bootstrap baseline (the field's practice)",
        f"- Objective: sum of Huber(delta={boot['delta']}) of logsumexp(a - alpha log N, b - beta log D, e) - log L "
        "(Hoffmann et al. 2022 Approach 3; Besiroglu et al. 2024), exact gradient, scipy L-BFGS-B with "
        f"{boot['fit_options']}, best of the starts kept.",
        "- Grid of starts used: " + ", ".join(f"{k} in {{{', '.join(f'{x:g}' for x in vals)}}}"
                                              for k, vals in boot["grid"].items())
        + f" ({boot['num_starts']} starts; Hoffmann's grid has 4,500).",
        f"- One fit with this grid: {boot['one_fit_s']:.2f} s. Hoffmann's full grid, timed on "
        f"{boot['hoffmann_grid_subset']['num_starts']} random starts of its {boot['hoffmann_grid_subset']['of']}: "
        f"{boot['hoffmann_grid_subset']['per_start_s'] * 1e3:.1f} ms per start, so one full-grid fit takes about "
        f"{boot['hoffmann_grid_subset']['one_full_grid_fit_s_extrapolated']:.0f} s and a 1,000-resample bootstrap "
        f"with it about {boot['hoffmann_grid_subset']['one_full_grid_fit_s_extrapolated'] * 1000 / 3600:.1f} h.",
        "- Same optimum from the modest grid and from the Hoffmann-grid subset: objective "
        f"{boot['point_objective']:.10g} vs {boot['hoffmann_grid_subset']['objective']:.10g}.",
        "- With scipy's default tolerances the fit stops early, along the flat A-B direction: "
        + ", ".join(f"{k}={_fmt(x)}" for k, x in boot["scipy_default_tolerances"]["params"].items())
        + f" (objective {boot['scipy_default_tolerances']['objective']:.10g}).",
        "",
        "## Estimates next to Besiroglu et al. 2024",
        "| param | Besiroglu point | our Huber point | bayescale median | bayescale 90% | bayescale 95% | "
        f"our bootstrap 95% ({boot['num_resamples']}) | Besiroglu bootstrap 95% (4,000) | PyMC median | PyMC 90% |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in LAW_PARAMS:
        post, pm_post = b["posterior"][name], pymc["posterior"][name]
        lines.append(
            f"| {name} | {_fmt(BESIROGLU[name])} | {_fmt(boot['point'][name])} | {_fmt(post['median'])} | "
            f"{_interval(post['q5'], post['q95'])} | {_interval(post['q2.5'], post['q97.5'])} | "
            f"{_interval(*boot['intervals_95'][name])} | {_interval(*BESIROGLU_95[name])} | "
            f"{_fmt(pm_post['median'])} | {_interval(pm_post['q5'], pm_post['q95'])} |"
        )
    inside = [n for n in LAW_PARAMS if BESIROGLU_95[n][0] <= b["posterior"][n]["median"] <= BESIROGLU_95[n][1]]
    lines += [
        "",
        f"bayescale's posterior medians inside Besiroglu's bootstrap 95% intervals: {len(inside)} of 5 "
        f"({', '.join(inside)}). sigma (Student-t scale on log loss): median {_fmt(b['posterior']['sigma']['median'])}.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few draws and resamples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="results path without suffix (default: benchmarks/results/fit_speed; "
                             "with --quick a temporary directory)")
    parser.add_argument("--child", choices=("bayescale", "pymc", "bootstrap"), help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--fits", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        settings = json.loads(args.settings)
        if args.child == "bayescale":
            result = child_bayescale(settings, args.fits, args.seed)
        elif args.child == "pymc":
            result = child_pymc(settings, args.seed)
        else:
            result = child_bootstrap(settings, args.seed)
        print(json.dumps(result, default=float))
        return

    settings = QUICK if args.quick else FULL
    out = args.out
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="fit_speed_")) / "fit_speed_quick" if args.quick else HERE / "results" / "fit_speed"
    results = run(settings, args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    report = markdown(results)
    out.with_suffix(".md").write_text(report)
    print(report)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
