"""How NUTS sees a grouped posterior: centred against non-centred pooled values (`bayescale.grouping`).

Simulated ladders with a loss per task (`tests/test_downstream_task_losses.py`'s `task_loss_ladder`: four
tasks, 5 model sizes x 3 token multiples, each task's own Chinchilla law, 0.5% noise) fitted as a multi-output
fit (`fit(y=[...])`: the tasks' losses are the groups) with every parameter partially pooled, and with the
exponents shared; 1 chain x 300 warm-up + 200 draws per fit, seeds 0-2, no discrepancy walk, no retry, no
misfit checks; the centred fit with every parameter pooled with and without level-and-slope coordinates per
group (`bayescale.saturating.GroupedSaturatingTermPrior`). And the chain with a loss per task
(`fit_downstream(loss_column={task: column})`, binomial accuracies), seed 0: exponents shared, both
centrings, and every loss-law parameter pooled (centred, level-and-slope); and the data mixing law on three simulated domains
(`tests/test_multi_output.py`'s `mixing_table`, 24 mixtures) with c and k partially pooled, 2 chains x 1000
+ 1000, with R-hat and bulk ESS. Records the mean number of leapfrog steps per draw
(1,023 = the longest trees, depth 10), divergences and wall time (the first fit of each model includes its
compilation, unless the persistent compilation cache holds it from an earlier run). Writes benchmarks/results/grouped_geometry.json and .md with the machine noted.

    .venv/bin/python benchmarks/grouped_geometry.py        # ~5 min on 2 cores
"""

import json
import os
import platform
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


def main() -> None:
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
    from bayescale import grouping

    ladder, _, tasks, _ = task_loss_ladder(num_tasks=4, seed=1)
    for centering, shared in (("centered", ("alpha", "beta")), ("noncentered", ("alpha", "beta")), ("centered", ())):
        # The chain decides its loss grouping's centring itself ("auto"); the bound moves it either way.
        original = grouping.CENTRED_RUNS_PER_PARAM
        grouping.CENTRED_RUNS_PER_PARAM = 0 if centering == "centered" else 10**9
        try:
            start = time.time()
            fit = fit_ladder(ladder, tasks, loss_shared=list(shared), metric_likelihood="binomial",
                             num_chains=1, num_warmup=300, num_samples=200, seed=0)
        finally:
            grouping.CENTRED_RUNS_PER_PARAM = original
        assert fit.spec.loss_grouping.centered == (centering == "centered")
        row = {"model": "chain, loss per task", "shared": ",".join(shared) or "none", "centering": centering,
               "coordinates": "declared" if shared else "level-and-slope", "seed": 0,
               **stats_of(fit, time.time() - start)}
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
