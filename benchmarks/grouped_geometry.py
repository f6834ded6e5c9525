"""How NUTS sees a grouped posterior: centred against non-centred pooled values (`bayescale.grouping`).

Simulated ladders with a loss per task (`tests/test_downstream_task_losses.py`'s `task_loss_ladder`: four
tasks, 5 model sizes x 3 token multiples, each task's own Chinchilla law, 0.5% noise) fitted as a multi-output
fit (`fit(y=[...])`: the tasks' losses are the groups) with every parameter partially pooled, and with the
exponents shared; 1 chain x 300 warm-up + 200 draws per fit, seeds 0-2, no discrepancy walk, no retry, no
misfit checks; the centred fit with every parameter pooled with and without level-and-slope coordinates per
group (`bayescale.saturating.GroupedSaturatingTermPrior`). And downstream chains on the same kind of ladder
(`fit_downstream`, Beta-Binomial accuracies, 1 x 300 + 200, seed 0): a loss per task (every loss-law
parameter pooled, centred, level-and-slope; and exponents shared) and one shared loss, with the chain's latent
losses diagonal in NUTS's mass matrix (the default, `inference.mass_structure`) or inside its dense block; and the data mixing law on three simulated domains
(`tests/test_multi_output.py`'s `mixing_table`, 24 mixtures) with c and k partially pooled, 2 chains x 1000
+ 1000, with R-hat and bulk ESS. Records the mean number of leapfrog steps per draw
(1,023 = the longest trees, depth 10), divergences and wall time (the first fit of each model includes its
compilation, unless the persistent compilation cache holds it from an earlier run). Writes benchmarks/results/grouped_geometry.json and .md with the machine noted.

    .venv/bin/python benchmarks/grouped_geometry.py        # ~12 min on 2 cores
"""

import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import bayescale as bs
import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from test_downstream_task_losses import fit_ladder, task_loss_ladder  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def stats_of(fit, seconds: float) -> dict:
    sample_stats = fit.data["sample_stats"]
    return {"mean_steps": float(sample_stats["n_steps"].mean()), "divergences": int(sample_stats["diverging"].sum()),
            "seconds": round(seconds, 1)}


CHAIN_CASES = [("loss per task", (), "diagonal"), ("loss per task", (), "dense"),
               ("loss per task", ("alpha", "beta"), "diagonal"), ("one shared loss", (), "diagonal"),
               ("one shared loss", (), "dense")]


def chain_case(case: int) -> dict:
    from bayescale import downstream, inference
    from test_downstream_task_losses import CHANCE, ITEMS

    model, shared, mass = CHAIN_CASES[case]
    if mass == "dense":
        inference.LATENT_LOSS_SITE = "_in_the_dense_block"
    ladder, _, tasks, _ = task_loss_ladder(num_tasks=4, seed=1)
    start = time.time()
    if model == "loss per task":
        fit = fit_ladder(ladder, tasks, loss_shared=list(shared), num_chains=1, num_warmup=300, num_samples=200, seed=0)
    else:
        fit = downstream.fit_downstream(ladder.rename(columns={"loss_task0": "loss"}), tasks=tasks,
                                        items=dict.fromkeys(tasks, ITEMS), chance=dict.fromkeys(tasks, CHANCE),
                                        num_chains=1, num_warmup=300, num_samples=200, seed=0)
    grouping = fit.spec.loss_grouping
    return {"model": f"chain, {model}, latent losses {mass}", "shared": ",".join(shared) or "none",
            "centering": "-" if grouping is None else ("centered" if grouping.centered else "noncentered"),
            "coordinates": "declared" if shared else "level-and-slope",  # a shared exponent keeps the declared ones
            "seed": 0, **stats_of(fit, time.time() - start)}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--chain-case":
        warnings.simplefilter("ignore")
        print(json.dumps(chain_case(int(sys.argv[2]))))
        return
    warnings.simplefilter("ignore")
    table, _, tasks, _ = task_loss_ladder(num_tasks=4, seed=0)
    rows = []
    from bayescale import saturating

    for shared in ((), ("alpha", "beta")):
        for centering in ("centered", "noncentered"):
            # Level-and-slope coordinates per group apply to centred groupings with no saturating parameter
            # shared; the centred, every-parameter-pooled fit is run with and without them.
            for coordinates in (("level-and-slope", "declared") if centering == "centered" and not shared else
                                ("declared",)):
                saturating.ENABLED = coordinates == "level-and-slope"
                for seed in (0, 1, 2):
                    start = time.time()
                    fit = bs.fit(table, "chinchilla", y=[f"loss_{t}" for t in tasks], shared=shared,
                                 centering=centering, seed=seed, num_chains=1, num_warmup=300, num_samples=200,
                                 discrepancy=None, retries=False, misfit_checks=False)
                    row = {"model": "multi-output losses", "shared": ",".join(shared) or "none",
                           "centering": centering, "coordinates": coordinates, "seed": seed,
                           **stats_of(fit, time.time() - start)}
                    print(row, flush=True)
                    rows.append(row)
                saturating.ENABLED = True
    from bayescale.models.data_mixing import DATA_MIXING
    from test_multi_output import OUTPUTS, mixing_table

    mixture = mixing_table(seed=0)
    pooling = {name: "partial" if name in ("c", "k") else "independent" for name in DATA_MIXING.params}
    for centering in ("centered", "noncentered"):
        start = time.time()
        fit = bs.fit(mixture, DATA_MIXING, y=OUTPUTS, pooling=pooling, centering=centering, num_chains=2,
                     num_warmup=1000, num_samples=1000, seed=0, retries=False)
        table_ = fit.diagnostics.table
        row = {"model": "data mixing, c and k pooled (2 x 1000 + 1000)", "shared": "none", "centering": centering,
               "coordinates": "declared (no saturating term)",
               "seed": 0, **stats_of(fit, time.time() - start), "max_rhat": round(float(np.nanmax(table_["rhat"])), 3),
               "min_ess_bulk": round(float(np.nanmin(table_["ess_bulk"])))}
        print(row, flush=True)
        rows.append(row)
    # Chains (default Beta-Binomial accuracies): a loss per task, and one shared loss (task0's), with the
    # latent losses diagonal in the mass (the default) or in the one dense block (before). Each in a fresh
    # process: the mass structure is part of a compiled program, which a process keeps.
    for case in range(len(CHAIN_CASES)):
        done = subprocess.run([sys.executable, __file__, "--chain-case", str(case)], capture_output=True, text=True,
                              check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(row, flush=True)
        rows.append(row)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "grouped_geometry.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    lines = ["# Grouped posteriors: centred against non-centred pooled values", "",
             f"Machine: {machine['platform']}, {machine['cpus']} CPUs, load average at the end "
             f"{machine['load_average'][0]:.1f}; {machine['date']}. Script: benchmarks/grouped_geometry.py.", "",
             "| model | shared | centering | coordinates | seed | mean leapfrog steps | divergences | seconds | max R-hat "
             "| min bulk ESS |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['shared']} | {r['centering']} | {r['coordinates']} | {r['seed']} | {r['mean_steps']:.0f} | "
              f"{r['divergences']} | {r['seconds']} | {r.get('max_rhat', '')} | {r.get('min_ess_bulk', '')} |"
              for r in rows]
    (RESULTS / "grouped_geometry.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
