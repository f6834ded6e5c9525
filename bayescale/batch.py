"""Many data sets of one law in one compiled program: padded, masked, batched MAP and NUTS.

`fit_batch(runs_list, law)` stacks the data sets into arrays of a common number of runs (`stack_runs`: each
data set is padded with copies of its own first run and a `mask` marks the real ones; the model's
likelihood, `data_stats` and the `Param.pivot` references all honour the mask, so a padded data set has the
same posterior as the unpadded one), then runs the engine's one sampler,
`bayescale.inference.sample_posterior`, mapped over data sets: the same pure functions (MAP from
prior starts, warm-up, draws in fixed-size chunks) that `fit()` calls unvmapped.

Keys follow `fit()`: data set i with seed s uses PRNGKey(s), so a batch and a single fit of the same data and
seed sample the same posterior (vmapped arithmetic is not bit-identical, and NUTS amplifies round-off, so
they agree to Monte Carlo error; see tests/test_batch.py).

Diagnostics are vectorised: R-hat and bulk/tail ESS by ArviZ over a "dataset" dimension, divergences and
E-BFMI with numpy, judged by `bayescale.diagnostics.judge` (the same thresholds and messages as
`check_convergence`, checked against it in the tests). `BatchFit.fit(i)` builds the engine's `Fit` of data
set i (posterior predictive, pointwise log-likelihood and prior draws computed vectorised over the batch),
so `save`/`load`/`summary`/`predict` work on it.

Devices: when JAX sees several local devices (GPUs, or the host "devices" `bayescale.compilation` asks XLA
for on CPU), the data-set axis is sharded over them with `jax.sharding` (a 1-D mesh; the batch is padded to
a multiple of the device count with copies of its last data set, dropped afterwards). On each device the data
sets run one after another (`batch_method="sequential"`, the CPU default) or vmapped ("vectorized", the GPU
and TPU default): vmapped NUTS runs the chains of all data sets in lockstep, each step costing the longest
trajectory in the batch (../shared/STACK.md), which on CPU made a batch 10x slower per data set than
running them in turn (`bayescale.inference.batch_method`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bayescale.diagnostics import Diagnostics, Thresholds, judge
from bayescale.inference import SamplerSettings, program_for, sample_posterior, scalar_sites
from bayescale.law import Law, data_stats, get_law
from bayescale.likelihood import Likelihood, as_likelihood
from bayescale.retries import as_retry_policy, attempt_record, escalate
from bayescale.model import law_model, pointwise_log_likelihood, posterior_predictive_draws, prior_draws
from bayescale.runs import Runs, read_table, runs_from_table, split_datasets

# ---- stacking data sets ----


@dataclass(frozen=True)
class Stacked:
    """Data sets padded to a common number of runs: arrays of shape (data sets, runs)."""

    x: dict[str, np.ndarray]
    y: np.ndarray
    se: np.ndarray | None
    mask: np.ndarray
    sizes: np.ndarray  # real runs per data set

    def __len__(self) -> int:
        return len(self.y)

    def model_inputs(self) -> tuple[tuple, dict]:
        """Batched (args, kwargs) of the model: each leaf has a leading data-set axis."""
        x = {k: jnp.asarray(v) for k, v in self.x.items()}
        y, mask = jnp.asarray(self.y), jnp.asarray(self.mask)
        stats = jax.vmap(data_stats)(y, mask, x)
        se = None if self.se is None else jnp.asarray(self.se)
        return (x, stats), {"y": y, "se": se, "mask": mask}


def stack_runs(runs_list: Sequence[Runs], num_runs: int | None = None) -> Stacked:
    """Pad each data set with copies of its own first run (real, finite values, so gradients stay finite)
    up to `num_runs` (default: the largest data set) and mark the padding in `mask`."""
    if not runs_list:
        raise ValueError("no data sets to stack")
    if any(r.y is None for r in runs_list):
        raise ValueError("every data set needs observed outputs")
    has_se = {r.se is not None for r in runs_list}
    if len(has_se) > 1:
        raise ValueError("either every data set has standard errors (se) or none has")
    inputs = list(runs_list[0].x)
    for i, r in enumerate(runs_list):
        if list(r.x) != inputs:
            raise ValueError(f"data set {i} has inputs {list(r.x)}, the first has {inputs}")
    sizes = np.array([len(r) for r in runs_list])
    width = int(num_runs or sizes.max())
    if width < sizes.max():
        raise ValueError(f"num_runs={width} is smaller than the largest data set ({sizes.max()} runs)")

    def pad(values):
        values = np.asarray(values, dtype=float)
        return np.concatenate([values, np.full(width - len(values), values[0])])

    return Stacked(
        x={k: np.stack([pad(r.x[k]) for r in runs_list]) for k in inputs},
        y=np.stack([pad(r.y) for r in runs_list]),
        se=np.stack([pad(r.se) for r in runs_list]) if has_se == {True} else None,
        mask=np.arange(width)[None, :] < sizes[:, None],
        sizes=sizes,
    )


# ---- the batched program ----


@partial(jax.jit, static_argnames=("model", "num_prior_draws", "conditional"))
def _predictive_many(model, keys, samples, args, kwargs, num_prior_draws, conditional=False):
    """Posterior predictive, pointwise log-likelihood and prior draws of every data set (as in fit())."""

    def one(key, samples, args, kwargs):
        _, _, key_pred = jax.random.split(key, 3)
        key_ppc, key_prior = jax.random.split(key_pred)
        ppc = posterior_predictive_draws(model, key_ppc, samples, args, kwargs, conditional=conditional)
        loglik = pointwise_log_likelihood(model, samples, args, kwargs)
        prior = prior_draws(model, key_prior, args, kwargs, num_prior_draws)
        return {"ppc": ppc["y"], "loglik": loglik["y"], "prior": prior}

    return jax.vmap(one)(keys, samples, args, kwargs)


def data_sharding(num_items: int):
    """A sharding of the leading (data-set) axis over all local devices, or None with one device."""
    devices = jax.local_devices()
    if len(devices) < 2:
        return None
    return NamedSharding(Mesh(np.array(devices), ("data",)), PartitionSpec("data"))


def _pad_batch(tree, total: int):
    def pad(a):
        a = jnp.asarray(a)
        extra = total - a.shape[0]
        return a if extra == 0 else jnp.concatenate([a, jnp.repeat(a[-1:], extra, axis=0)])

    return jax.tree.map(pad, tree)


def _shard_inputs(inputs, count: int, shard: bool):
    """Pad the data-set axis to a multiple of the local device count and shard it over the devices (a batch
    of 3 on 4 devices runs as 4, so small batches of any size share one compiled program). Returns the
    inputs and the number of devices they are spread over."""
    sharding = data_sharding(count) if shard else None
    if sharding is None:
        return inputs, 1
    devices = sharding.mesh.size
    total = -(-count // devices) * devices
    return jax.device_put(_pad_batch(inputs, total), sharding), devices


def unpadded(samples: Mapping[str, np.ndarray], i: int, num_runs: int) -> dict[str, np.ndarray]:
    """Data set `i`'s draws from batched ones {site: (data sets, chains, draws, ...)}; sites with one value per
    run (`bayescale.discrepancy.PER_RUN_SITES`) lose the padding's entries."""
    from bayescale.discrepancy import PER_RUN_SITES

    return {k: (v[i][..., :num_runs] if k in PER_RUN_SITES else v[i]) for k, v in samples.items()}


# ---- vectorised diagnostics ----


def _bfmi(energy: np.ndarray) -> np.ndarray:
    """E-BFMI per chain (Betancourt 2016), as ArviZ computes it; energy: (..., chains, draws)."""
    return np.square(np.diff(energy, axis=-1)).mean(axis=-1) / np.var(energy, axis=-1, ddof=1)


def batch_diagnostics(samples: Mapping[str, np.ndarray], stats: Mapping[str, np.ndarray],
                      thresholds: Thresholds = Thresholds()) -> list[Diagnostics]:
    """Per-data-set `Diagnostics` from batched draws {name: (data sets, chains, draws)}: one ArviZ call for
    R-hat and ESS over a "dataset" dimension instead of one per data set; judged by `diagnostics.judge`."""
    import arviz as az

    names = [n for n in samples if not str(n).startswith("_")]
    posterior = {n: np.moveaxis(np.asarray(samples[n]), 0, 2) for n in names}  # (chain, draw, dataset)
    dt = az.from_dict({"posterior": posterior}, dims={n: ["dataset"] for n in names})
    rhat = {n: np.asarray(az.rhat(dt, var_names=[n])[n]) for n in names}
    bulk = {n: np.asarray(az.ess(dt, method="bulk", var_names=[n])[n]) for n in names}
    tail = {n: np.asarray(az.ess(dt, method="tail", var_names=[n])[n]) for n in names}
    divergences = np.asarray(stats["diverging"]).sum(axis=(1, 2))
    bfmi = _bfmi(np.asarray(stats["energy"]))
    num_chains, num_draws = np.shape(stats["energy"])[1:]
    out = []
    for i in range(len(divergences)):
        table = pd.DataFrame({
            "rhat": {n: float(rhat[n][i]) for n in names},
            "ess_bulk": {n: float(bulk[n][i]) for n in names},
            "ess_tail": {n: float(tail[n][i]) for n in names},
        })
        out.append(judge(table, int(divergences[i]), num_chains * num_draws, bfmi[i], num_chains, thresholds))
    return out


# ---- the result ----


@dataclass
class BatchFit:
    """Draws of every data set: `samples[name]` (data sets, chains, draws, ...), `stats` likewise (numpyro
    sample stats under ArviZ names), `map` (data sets, ...) in the user's units, `diagnostics` per data set."""

    law: Law
    likelihood: Likelihood
    runs: list[Runs]
    stacked: Stacked
    samples: dict[str, np.ndarray]
    stats: dict[str, np.ndarray]
    map: dict[str, np.ndarray]
    map_log_density: np.ndarray
    diagnostics: list[Diagnostics]
    settings: SamplerSettings
    seeds: np.ndarray
    priors: dict[str, Any] = field(default_factory=dict)
    num_prior_draws: int = 500
    shard: bool = True
    # Per data set: its failed attempts (`bayescale.retries.attempt_record`) and the settings of its last run.
    attempts: list[list[dict]] = field(default_factory=list)
    member_settings: list[SamplerSettings] = field(default_factory=list)
    names: list = field(default_factory=list)  # each data set's name (group value; index for a list of Runs)
    _predictive: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.runs)

    @property
    def converged(self) -> np.ndarray:
        return np.array([d.converged for d in self.diagnostics])

    def predictive(self) -> dict[str, np.ndarray]:
        """Posterior predictive, pointwise log-likelihood and prior draws of every data set (computed once,
        vectorised over the batch; (data sets, chains x draws, runs) each, so large batches should ask for
        them a shard at a time, as `bayescale.jobs` does)."""
        if self._predictive is None:
            model = law_model(self.law, self.likelihood)
            args, kwargs = self.stacked.model_inputs()
            flat = {k: v.reshape(v.shape[0], -1, *v.shape[3:]) for k, v in self.samples.items()}
            keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(self.seeds))
            inputs, _ = _shard_inputs((keys, flat, args, kwargs), len(self), self.shard)
            out = _predictive_many(model, *inputs, self.num_prior_draws, self.likelihood.discrepancy is not None)
            self._predictive = jax.tree.map(lambda a: np.asarray(a)[:len(self)], out)
        return self._predictive

    def member_samples(self, i: int) -> dict[str, np.ndarray]:
        """Data set `i`'s posterior draws {site: (chains, draws, ...)}, per-run sites cut to its own runs."""
        return unpadded(self.samples, i, int(self.stacked.sizes[i]))

    def fit(self, i: int, misfit_checks: bool = True):
        """The engine's `Fit` of data set `i` (padding removed), as `bayescale.fit.fit` would return it
        (`misfit_checks`: with its `bayescale.misfit` checks, ~0.1 s, but without the warnings)."""
        from bayescale.fit import Fit, datatree_from_draws
        from bayescale.misfit import applies, check_misfit

        pred = self.predictive()
        n = int(self.stacked.sizes[i])
        num_chains = self.settings.num_chains
        by_chain = lambda a: np.asarray(a).reshape(num_chains, -1, *np.shape(a)[1:])  # noqa: E731
        dt = datatree_from_draws(
            posterior=unpadded(self.samples, i, n),
            sample_stats={k: v[i] for k, v in self.stats.items()},
            log_likelihood=by_chain(pred["loglik"][i][:, :n]),
            posterior_predictive=by_chain(pred["ppc"][i][:, :n]),
            prior={k: v[i] if k != "y" else v[i][:, :n] for k, v in pred["prior"].items()},
            runs=self.runs[i],
        )
        return Fit(
            law=self.law,
            likelihood=self.likelihood,
            data=dt,
            runs=self.runs[i],
            diagnostics=self.diagnostics[i],
            settings=self.member_settings[i] if self.member_settings else self.settings,
            seed=int(self.seeds[i]),
            map=scalar_sites({k: v[i] for k, v in self.map.items()}),
            priors=self.priors,
            misfit=check_misfit(dt, self.runs[i].labels) if misfit_checks and applies(dt, self.likelihood.family) else None,
            attempts=list(self.attempts[i]) if self.attempts else [],
        )


def _data_sets(data, law: Law, *, group, columns, y, se, allow_repeats) -> tuple[list, list[Runs]]:
    """(names, runs) of the data sets of `data`: a table split by `group`, or a list of `Runs` as given."""
    if isinstance(data, (pd.DataFrame, str, Path)):
        if group is None:
            raise ValueError("fit_batch of a table needs group=COLUMN, the column naming each row's data set "
                             "(one data set: use fit())")
        parts = split_datasets(read_table(data), group)
        runs = [runs_from_table(part, law, columns=columns, y=y, se=se, allow_repeats=allow_repeats)
                for part in parts.values()]
        return list(parts), runs
    if group is not None or columns is not None:
        raise ValueError("group= and columns= read a table; fit_batch was given a list of Runs")
    runs = list(data)
    if not all(isinstance(r, Runs) for r in runs):
        raise TypeError("fit_batch takes a table with group=COLUMN, or a list of Runs (runs_from_table)")
    return list(range(len(runs))), runs


def fit_batch(
    data: Sequence[Runs] | pd.DataFrame | str | Path,
    law: str | Law,
    *,
    group: str | None = None,
    columns: Mapping[str, str] | None = None,
    y: str = "loss",
    se: str | None = None,
    allow_repeats: bool = False,
    likelihood: str | Likelihood = "normal",
    discrepancy: Any = "default",
    priors: Mapping[str, Any] | None = None,
    settings: SamplerSettings | None = None,
    seeds: Sequence[int] | int = 0,
    map_starts: int = 32,
    map_iter: int = 500,
    num_runs: int | None = None,
    num_prior_draws: int = 500,
    thresholds: Thresholds = Thresholds(),
    shard: bool = True,
    chunk_size: int | None = 256,
    retries: Any = None,
    batch_method: str = "auto",
) -> BatchFit:
    """Fit `law` to every data set of `data` in one compiled program.

    `data`: a table (DataFrame or file) with `group` naming the column whose values split it into data sets,
    read as `fit()` reads a table (`columns`, `y`, `se`, `allow_repeats`); or a list of validated `Runs`
    (e.g. from `runs_from_table`). `BatchFit.names` holds each data set's group value, in the order of
    first appearance. `likelihood` and `discrepancy`: as in `bayescale.fit`. `seeds`: one per data set, or an int s giving data set i the seed s + i. `num_runs`: pad
    to this many runs (a fixed width lets batches of different data share one compiled program).
    `shard`: split the data sets over all local devices when there are several. `chunk_size`: at most this
    many data sets per call of the compiled program (the last chunk padded to it, so one compilation serves
    all chunks); memory then stays that of one chunk, whatever the batch size (measured on CPU: ~2 GB peak
    for 100 Chinchilla data sets x 4 chains x 500 + 500, 14 GB for 1,000 in one call). None: one call.
    `retries`: as in `bayescale.fit`; the data sets that fail their checks are refitted together in a second
    pass with escalated settings (same number of draws), and `attempts[i]` says what was done.
    `batch_method`: how the data sets on one device run, "sequential" (one after another) or "vectorized"
    (vmapped, in lockstep); "auto" picks vectorized on GPU/TPU and sequential on CPU
    (`bayescale.inference.batch_method`, with the measurement behind it)."""
    from bayescale.fit import _check_prior_names

    law = get_law(law)
    likelihood = as_likelihood(likelihood, discrepancy, law=law)
    priors = dict(priors or {})
    _check_prior_names(priors, law, likelihood)
    law, likelihood = law.with_priors(priors), likelihood.with_priors(priors)
    settings = settings or SamplerSettings()
    names, runs_list = _data_sets(data, law, group=group, columns=columns, y=y, se=se, allow_repeats=allow_repeats)
    count = len(runs_list)
    seeds = np.arange(seeds, seeds + count) if np.ndim(seeds) == 0 else np.asarray(seeds, dtype=np.int64)
    if len(seeds) != count:
        raise ValueError(f"{len(seeds)} seeds for {count} data sets")

    stacked = stack_runs(runs_list, num_runs)
    model = law_model(law, likelihood)
    args, kwargs = stacked.model_inputs()
    program = program_for(model, *jax.tree.map(lambda a: a[0], (args, kwargs)))
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds))

    out = _run_chunks(program, settings, map_starts, map_iter, (keys, args, kwargs), chunk_size, shard, batch_method)
    diagnostics = batch_diagnostics(out["samples"], out["stats"], thresholds)

    # Retries (`bayescale.retries`): the data sets that failed their checks are refitted together, in one more
    # vmapped pass per retry, with settings escalated by every kind of failure among them; the number of
    # draws stays, so their draws replace the failed ones in place.
    policy = as_retry_policy(retries)
    attempts = [[] for _ in range(count)]
    member_settings = [settings] * count
    current, starts = settings, map_starts
    for attempt in range(1, policy.max_retries + 1):
        failed = np.flatnonzero([not d.converged for d in diagnostics])
        if failed.size == 0:
            break
        kinds = frozenset().union(*(diagnostics[i].failed for i in failed))
        step = escalate(current, starts, kinds, policy, fixed_draws=True)
        for i in failed:
            attempts[i].append(attempt_record(current, starts, diagnostics[i], step.reason))
        current, starts = step.settings, step.map_starts
        retry_keys = jax.vmap(lambda k: jax.random.fold_in(k, attempt))(keys[failed])
        subset = jax.tree.map(lambda a: a[failed], (args, kwargs))
        again = _run_chunks(program, current, starts, map_iter, (retry_keys, *subset), chunk_size, shard, batch_method)
        redone = batch_diagnostics(again["samples"], again["stats"], thresholds)
        out = jax.tree.map(lambda whole, part: _put(whole, failed, part), out, again)
        for j, i in enumerate(failed):
            diagnostics[i] = redone[j]
            member_settings[i] = current

    samples = dict(out["samples"])
    return BatchFit(
        law=law,
        likelihood=likelihood,
        runs=runs_list,
        stacked=stacked,
        samples=samples,
        stats=out["stats"],
        map=out["map"],
        map_log_density=out["map_log_density"],
        diagnostics=diagnostics,
        settings=settings,
        seeds=seeds,
        priors=priors,
        num_prior_draws=num_prior_draws,
        shard=shard,
        attempts=attempts,
        member_settings=member_settings,
        names=names,
    )


def _put(whole: np.ndarray, index: np.ndarray, part: np.ndarray) -> np.ndarray:
    out = np.array(whole, copy=True)
    out[index] = part
    return out


def _run_chunks(program, settings, map_starts, map_iter, inputs, chunk_size, shard, method) -> dict:
    """`bayescale.inference.sample_posterior` over (keys, args, kwargs) with a data-set axis, `chunk_size`
    data sets per call (the last chunk padded to it, so every chunk runs the same compiled programs)."""
    count = len(inputs[0])
    width = count if not chunk_size or count <= chunk_size else int(chunk_size)
    pieces = []
    for start in range(0, count, width):
        chunk = jax.tree.map(lambda a: a[start:start + width], inputs)
        size = len(chunk[0])
        sharded, devices = _shard_inputs(_pad_batch(chunk, width), width, shard)
        out = sample_posterior(program, settings, *sharded, map_starts=map_starts, map_iter=map_iter, batched=True,
                               batch=method, data_devices=devices)
        pieces.append(jax.tree.map(lambda a: np.asarray(a)[:size], out))
    out = jax.tree.map(lambda *parts: np.concatenate(parts), *pieces) if len(pieces) > 1 else pieces[0]
    # One value per data set: the per-start values have as many columns as MAP starts, which a retry changes.
    out["map_log_density"] = -np.min(out.pop("map_values"), axis=-1)
    return {**out, "samples": dict(out["samples"])}
