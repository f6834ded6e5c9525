"""Grouped fits: one law over several setups (data sets, architectures, tokenizers), some parameters shared
across groups and others per group.

Each law parameter gets a pooling level:
- "shared": one value for all groups (e.g. the exponents, when the setups differ only in constants);
- "partial" (the default): one value per group, drawn from a common distribution whose centre and spread
  are fitted (a hierarchical prior), so a group with few runs borrows strength from the others;
- "independent": one value per group, each with the law's own prior, no borrowing.

Partial pooling is done on each parameter's unconstrained scale, non-centred when groups have few runs (which
NUTS needs when groups say little or agree closely; centred otherwise, below): with T the bijection from the
real line onto the prior's support,

    name_mu ~ the law's prior on `name`            (the centre, in the user's units)
    name_tau ~ HalfNormal(scale)                    (the spread between groups, unconstrained scale)
    name[g] = T(T^-1(name_mu) + name_tau * z_g),    z_g ~ Normal(0, 1)

For a positive parameter T = exp, so `name_tau` is the spread of log(name) between groups: 0.1 means about
10%. A parameter whose prior is an interval (l, b) is pooled on log(name - l), truncated above at each
group's own bound: priors that depend on the data read each group's data there (the irreducible loss E
lies below that group's smallest loss), and the loosest group's bound for the centre (`pooled_value`). A
new group, not in the fit, is predicted by a fresh z from the same distribution (`group_params`), with the
pooled data's bounds.

A coefficient pivoted at its input's reference (`Param.pivot`: A in A N^-alpha) is pooled there, where the
data pin it down, not at N = 1: log A_g - alpha_g log N_ref ~ Normal(log A_mu - alpha_mu log N_ref, tau)
(the same as pooling log A when the exponent is shared). Pooled at N = 1, a group's coefficient and its own
exponent trade along a ridge as steep as log N_ref (~20 for parameter counts).

Groups whose own runs pin their parameters down (every group with at least `CENTRED_RUNS_PER_PARAM` runs per
law parameter) are sampled centred instead, u_g ~ Normal(T^-1(name_mu), name_tau) (Papaspiliopoulos, Roberts
and Skold 2007): the non-centred offsets z_g are then tied to the centre and spread by the data, the geometry
NUTS finds hardest. The prior is the same either way. Measured on four tasks' Chinchilla losses (15 runs each,
0.5% noise, `fit(y=[...])`, 1 x 300 + 200, seeds 0-2; benchmarks/results/grouped_geometry.md): with the
exponents shared, 56-62 leapfrog steps per draw centred against 1,017-1,020 non-centred (the longest trees);
with every parameter pooled, 188-1,023 centred against 1,023 (a first trial, one seed: 664 centred with A
pooled at N = 1). What is left there is each group's floor-exponent ridge, which single fits sample in
level-and-slope coordinates (`bayescale.saturating`). So do centred grouped fits in which no parameter of the
law's saturating term is shared (`grouped_saturating_sites`): one level-and-slope site per group whose density
is that group's hierarchical prior given the centres and spreads, times the Jacobian
(`bayescale.saturating.GroupedSaturatingTermPrior`); same data, 166-315 leapfrog steps per draw (1 divergence in
600 draws) against 188-1,023 centred in the declared parameters. With a shared exponent the declared
parameters, centred, already sample well (56-62 steps) and keep them.

    fit(table, "chinchilla", group="dataset", shared=["alpha", "beta"])           # partial pooling of E, A, B
    fit(table, "chinchilla", group="dataset", pooling="independent", shared=["alpha", "beta"])

Several outputs of one run (a loss per domain or per task) are groups too: `fit(table, law, y=["loss_web",
"loss_code", ...])` stacks the output columns (`bayescale.runs.outputs_long`) and groups the cells by output
column, so each output gets its own parameters, pooled as above, in one joint posterior; a prediction gives
every output from the same draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import AffineTransform, ExpTransform, biject_to

from bayescale.law import Law, resolve_prior
from bayescale.likelihood import Likelihood
from bayescale.model import sample_pivoted
from bayescale.saturating import GroupedSaturatingTermPrior, SaturatingTermPrior, sample_saturating_term, support_bounds

POOLING_LEVELS = ("partial", "independent", "shared")
CENTERINGS = ("auto", "centered", "noncentered")
# "auto" samples pooled values centred when every group has at least this many runs per law parameter (a
# Chinchilla law: 10 runs per group). Measured: four groups of 15 runs (3 per parameter), exponents shared,
# 56-62 leapfrog steps per draw centred against 1,017-1,020 non-centred (module docstring); few runs per group
# keep the non-centred offsets, which the data barely constrain (not measured here: the textbook case).
CENTRED_RUNS_PER_PARAM = 2


@dataclass(frozen=True)
class Grouping:
    """How a law's parameters vary across the groups named by table column `column`.

    `levels`: (parameter, level) pairs for every law parameter; `scale`: the HalfNormal scale of each
    partially pooled parameter's between-group spread (unconstrained scale; 0.5 allows groups to differ by
    tens of per cent in a positive parameter, and much more if the data say so)."""

    column: str
    levels: tuple[tuple[str, str], ...]
    scale: float = 0.5
    # True when the groups are a table's output columns (`fit(y=[...])`, `bayescale.runs.outputs_long`):
    # predictions are then made for every output at once unless points name one.
    outputs: bool = False
    # Pooled values sampled centred (every group's runs pin its parameters) or non-centred (module docstring):
    # how NUTS sees the posterior, not the prior.
    centered: bool = False
    # Pivoted coefficients pooled at their input's reference (module docstring). False only in fits saved
    # before pooling moved there (their prior pooled log A at x = 1), so they predict new groups as fitted.
    pooled_at_reference: bool = False

    @property
    def level(self) -> dict[str, str]:
        return dict(self.levels)

    def varying(self) -> tuple[str, ...]:
        return tuple(name for name, level in self.levels if level != "shared")

    def to_dict(self) -> dict:
        return {"column": self.column, "levels": dict(self.levels), "scale": self.scale, "outputs": self.outputs,
                "centered": self.centered, "pooled_at_reference": self.pooled_at_reference}

    @classmethod
    def from_dict(cls, spec: Mapping) -> Grouping:
        return cls(column=spec["column"], levels=tuple(spec["levels"].items()), scale=float(spec["scale"]),
                   outputs=bool(spec.get("outputs", False)), centered=bool(spec.get("centered", False)),
                   pooled_at_reference=bool(spec.get("pooled_at_reference", False)))


def make_grouping(
    law: Law,
    column: str,
    pooling: str | Mapping[str, str] = "partial",
    shared: Sequence[str] = (),
    scale: float = 0.5,
    outputs: bool = False,
    centering: str = "noncentered",
    group_sizes: Sequence[int] = (),
) -> Grouping:
    """A `Grouping` from user options: `pooling` is one level for all parameters or {parameter: level}
    (parameters not named get "partial"); `shared` names parameters that are one value for all groups;
    `centering` one of `CENTERINGS` ("auto" decides by `group_sizes`, the number of runs of each group)."""
    if centering not in CENTERINGS:
        raise ValueError(f"unknown centering {centering!r}; choose one of {', '.join(CENTERINGS)}")
    if law.numpyro_model is not None:
        raise ValueError(f"law {law.name!r} is a raw NumPyro model: grouped fits need a law with declared params")
    if isinstance(pooling, str):
        levels = dict.fromkeys(law.params, pooling)
    else:
        levels = dict.fromkeys(law.params, "partial")
        unknown = sorted(set(pooling) - set(law.params))
        if unknown:
            raise KeyError(f"pooling given for unknown parameters {unknown}; law {law.name!r} has {list(law.params)}")
        levels.update(pooling)
    unknown = sorted(set(shared) - set(law.params))
    if unknown:
        raise KeyError(f"shared names unknown parameters {unknown}; law {law.name!r} has {list(law.params)}")
    levels.update(dict.fromkeys(shared, "shared"))
    bad = {k: v for k, v in levels.items() if v not in POOLING_LEVELS}
    if bad:
        raise ValueError(f"pooling levels {bad} are not one of {POOLING_LEVELS}")
    if not scale > 0:
        raise ValueError(f"the between-group scale must be positive, got {scale}")
    if centering == "auto":
        centered = bool(len(group_sizes) > 0 and min(group_sizes) >= CENTRED_RUNS_PER_PARAM * law.num_params)
    else:
        centered = centering == "centered"
    return Grouping(column=column, levels=tuple(levels.items()), scale=float(scale), outputs=outputs,
                    centered=centered, pooled_at_reference=True)


def group_stats(y: np.ndarray, codes: np.ndarray, num_groups: int) -> dict[str, np.ndarray]:
    """Each group's smallest and largest output (what data-dependent priors read, per group)."""
    y_min = np.full(num_groups, np.inf)
    y_max = np.full(num_groups, -np.inf)
    np.minimum.at(y_min, codes, y)
    np.maximum.at(y_max, codes, y)
    return {"group_y_min": y_min, "group_y_max": y_max}


def _per_group(stats: Mapping) -> dict:
    # Where the data lie on each input is the whole data set's, shared by the groups.
    out = {"y_min": stats["group_y_min"], "y_max": stats["group_y_max"]}
    if "x_log_mean" in stats:
        out["x_log_mean"] = stats["x_log_mean"]
    return out


def _log_reference(stats: Mapping, x, source: str):
    """log x_ref of a pivot's input: the data's geometric mean (`data_stats`), else the mean log of `x`."""
    if "x_log_mean" in stats and source in stats["x_log_mean"]:
        return stats["x_log_mean"][source]
    return jnp.mean(jnp.log(x[source]))


def _pivot_shift(law: Law, name: str, values: Mapping, centres: Mapping, x, centre: bool, stats: Mapping):
    """log A_ref = log A - exponent * log x_ref: the shift that decorrelates a coefficient from its exponent
    (see `bayescale.law.Param`). The centre of a pooled coefficient shifts by the exponent's centre (the mean
    over groups of an independent exponent)."""
    source, exponent = law.params[name].pivot
    e = centres[exponent] if (centre and exponent in centres) else values[exponent]
    e = jnp.mean(e) if (centre and jnp.ndim(e)) else e
    return e * _log_reference(stats, x, source)


def _sample_centre_and_spread(law: Law, name: str, grouping: Grouping, values: Mapping, centres: dict, x,
                              stats: Mapping, centre_stats: Mapping):
    """A partially pooled parameter's centre `name_mu` (into `centres`; a pivoted coefficient's through its
    decorrelated site) and spread `name_tau`; returns (spread, the centre's pivot shift or None)."""
    param = law.params[name]
    shift = _pivot_shift(law, name, values, centres, x, True, stats) if param.pivot is not None else None
    centres[name] = _sample_value(f"{name}_mu", resolve_prior(param.prior, centre_stats), shift)
    return numpyro.sample(f"{name}_tau", dist.HalfNormal(grouping.scale)), shift


def _sample_value(site: str, prior, shift):
    return numpyro.sample(site, prior) if shift is None else sample_pivoted(site, prior, shift)


def _is_interval(support) -> bool:
    return hasattr(support, "lower_bound") and hasattr(support, "upper_bound")


def _pooling_scale(support):
    """(to, back): the scale on which a parameter is pooled. On an interval (l, b): log(value - l), so a
    floor such as E in (0, min loss) pools on the log scale; otherwise NumPyro's bijection onto the support
    (log for positive parameters, identity for real ones)."""
    if _is_interval(support):
        lower = support.lower_bound
        return (lambda v: jnp.log(v - lower)), (lambda u: lower + jnp.exp(u))
    transform = biject_to(support)
    return transform.inv, transform


def group_offsets_prior(support) -> dist.Distribution:
    """The prior of the standardised group offsets z: Normal, or Uniform(0, 1) on an interval, where z is
    the position in the truncated normal's CDF (see `pooled_value`)."""
    return dist.Uniform(0.0, 1.0) if _is_interval(support) else dist.Normal(0.0, 1.0)


def pooled_value(support, centre, spread, z):
    """name[g] from the centre, spread and offset z (module docstring). On an interval (l, b_g), e.g.
    E < each group's smallest loss, log(name[g] - l) is Normal(log(centre - l), spread) truncated above at
    log(b_g - l), drawn by the inverse CDF so that the sampler still sees a standardised offset
    (non-centred)."""
    to, back = _pooling_scale(support)
    u_centre = to(centre)
    if not _is_interval(support):
        return back(u_centre + spread * z)
    bound = to(support.upper_bound)
    upper = jax.scipy.special.ndtr((bound - u_centre) / spread)
    position = jnp.clip(z * upper, 1e-300, 1.0 - 1e-16)
    # The clip only acts where the bound lies > 37 spreads below the centre (the CDF underflows); there the
    # minimum keeps the value at the bound rather than past it.
    return back(jnp.minimum(u_centre + spread * jax.scipy.special.ndtri(position), bound))


def new_group_value(support, centre, spread, z):
    """A parameter of a group the fit has not seen (z standard normal), on the pooling scale: not truncated
    above, since that group's data, which bound it, are unknown."""
    to, back = _pooling_scale(support)
    return back(to(centre) + spread * z)


def grouped_saturating_sites(law: Law, grouping: Grouping, stats: Mapping):
    """`bayescale.model.saturating_sites` where a grouped fit samples the saturating term in level-and-slope
    coordinates per group (`GroupedSaturatingTermPrior`): none of its parameters shared (a shared exponent
    would need coordinates that hold it fixed across groups), pooled ones only in a centred grouping (each
    group's coordinates carry its hierarchical prior given the centre and spread, a centred parametrisation),
    every coefficient positive, and a pooled coefficient's exponent pooled too (its centre is where the
    coefficient is pooled). None otherwise."""
    from bayescale.model import saturating_sites

    sites = saturating_sites(law, stats)
    if sites is None:
        return None
    level = grouping.level
    floor, coefficients, exponents, _ = sites
    if any(level[n] == "shared" for n in (floor, *coefficients, *exponents)):
        return None
    if not grouping.centered and any(level[n] == "partial" for n in (floor, *coefficients, *exponents)):
        return None  # each group's coordinates carry its hierarchical prior centred: for groups with many runs
    for c in coefficients:
        prior = resolve_prior(law.params[c].prior, stats)
        if not isinstance(prior.support, type(constraints.positive)):
            return None
        if level[c] == "partial" and level[law.params[c].pivot[1]] != "partial":
            return None
    return sites


def _sample_grouped_saturating_term(law: Law, grouping: Grouping, sites, stats: Mapping, x, num_groups: int,
                                    centres: Mapping, spreads: Mapping, centre_shifts: Mapping) -> dict:
    """Every group's floor, coefficients and exponents through one level-and-slope site per group, each group's
    prior the declared one (independent) or the pooled one given the centres and spreads (partial)."""
    floor, coefficients, exponents, term_exponents = sites
    names = (floor, *coefficients, *exponents)
    level = grouping.level
    log_x_refs = jnp.stack([jnp.asarray(_log_reference(stats, x, law.params[c].pivot[0]), float) for c in coefficients])
    x_log_mean = {"x_log_mean": stats["x_log_mean"]} if "x_log_mean" in stats else {}

    def pooling_loc(name):
        to, _ = _pooling_scale(resolve_prior(law.params[name].prior, _per_group(stats)).support)
        return to(centres[name]) - centre_shifts.get(name, 0.0)

    full = lambda v: jnp.broadcast_to(jnp.asarray(v, float), (num_groups,))  # noqa: E731
    params = {"y_min": full(stats["group_y_min"]), "y_max": full(stats["group_y_max"])}
    for name in names:
        if level[name] == "partial":
            params[f"{name}_loc"], params[f"{name}_tau"] = full(pooling_loc(name)), full(spreads[name])

    def make(p):
        declared = {n: resolve_prior(law.params[n].prior, {"y_min": p["y_min"], "y_max": p["y_max"], **x_log_mean})
                    for n in names}
        lo, hi = support_bounds(declared[floor])
        if level[floor] != "partial":
            floor_prior = declared[floor]
        elif _is_interval(declared[floor].support):  # log(E - lo) pooled, truncated at the group's own bound
            floor_prior = dist.TransformedDistribution(
                dist.TruncatedNormal(p[f"{floor}_loc"], p[f"{floor}_tau"], high=jnp.log(hi - lo)),
                [ExpTransform(), AffineTransform(lo, 1.0)])
        else:
            floor_prior = dist.LogNormal(p[f"{floor}_loc"], p[f"{floor}_tau"])
        log_coefficient_priors = [
            dist.Normal(p[f"{c}_loc"], p[f"{c}_tau"]) if level[c] == "partial"
            else dist.TransformedDistribution(declared[c], ExpTransform().inv) for c in coefficients]
        exponent_priors = [dist.LogNormal(p[f"{e}_loc"], p[f"{e}_tau"]) if level[e] == "partial" else declared[e]
                           for e in exponents]
        at_reference = [level[c] == "partial" for c in coefficients]  # this path pools at the reference
        return SaturatingTermPrior(floor_prior, (), exponent_priors, term_exponents, log_x_refs, names=names,
                                   floor_bounds=(lo, hi), log_coefficient_priors=log_coefficient_priors,
                                   at_reference=at_reference)

    return sample_saturating_term(GroupedSaturatingTermPrior(make, params, num_groups, len(coefficients), names))


def sample_grouped_params(law: Law, grouping: Grouping, stats: Mapping, x: Mapping, num_groups: int,
                          level_slope: bool = False) -> dict:
    """The law's parameters, each a scalar ("shared") or a vector over groups, as NumPyro sample sites.
    `level_slope`: sample a saturating term in level-and-slope coordinates per group where
    `grouped_saturating_sites` allows (`bayescale.saturating.ENABLED`, read by the callers)."""
    level = grouping.level
    group = _per_group(stats)
    # The centre of a pooled parameter may lie anywhere a group's value may: its data-dependent bounds are
    # the loosest of the groups' (E_mu below the largest of the groups' smallest losses).
    centre_stats = {"y_min": jnp.max(stats["group_y_min"]), "y_max": jnp.max(stats["group_y_max"])}
    if "x_log_mean" in stats:
        centre_stats["x_log_mean"] = stats["x_log_mean"]
    values: dict = {}
    centres: dict = {}
    ordered = [n for n, p in law.params.items() if p.pivot is None] + [n for n, p in law.params.items() if p.pivot]
    # Fits saved before grouped level-and-slope coordinates (and pooling at the reference) keep their model.
    sites = grouped_saturating_sites(law, grouping, stats) if level_slope and grouping.pooled_at_reference else None
    if sites is not None:
        # The term's pooled centres and spreads first, then one level-and-slope site per group for its values.
        joint = {sites[0], *sites[1], *sites[2]}
        spreads, centre_shifts = {}, {}
        for name in [n for n in ordered if n in joint and level[n] == "partial"]:
            spreads[name], shift = _sample_centre_and_spread(law, name, grouping, values, centres, x, stats, centre_stats)
            if shift is not None:  # this path pools coefficients at the reference (`pooled_at_reference`)
                centre_shifts[name] = shift
        values.update(_sample_grouped_saturating_term(law, grouping, sites, stats, x, num_groups, centres, spreads,
                                                      centre_shifts))
        ordered = [n for n in ordered if n not in joint]
    for name in ordered:
        param = law.params[name]
        pooled_prior = resolve_prior(param.prior, stats)
        pivoted = param.pivot is not None
        if level[name] == "shared":
            shift = _pivot_shift(law, name, values, centres, x, True, stats) if pivoted else None
            values[name] = _sample_value(name, pooled_prior, shift)
        elif level[name] == "independent":
            group_prior = resolve_prior(param.prior, group).expand([num_groups])
            shift = _pivot_shift(law, name, values, centres, x, False, stats) if pivoted else None
            with numpyro.plate(grouping.column, num_groups):
                values[name] = _sample_value(name, group_prior, shift)
        else:
            spread, shift = _sample_centre_and_spread(law, name, grouping, values, centres, x, stats, centre_stats)
            support = resolve_prior(param.prior, group).support
            at_reference = pivoted and grouping.pooled_at_reference and not _is_interval(support)
            values[name] = numpyro.deterministic(name, _sample_pooled(
                name, grouping, num_groups, support, centres[name], spread,
                shift=_pivot_shift(law, name, values, centres, x, False, stats) if at_reference else 0.0,
                centre_shift=shift if at_reference else 0.0))
    return values


def _sample_pooled(name: str, grouping: Grouping, num_groups: int, support, centre, spread, shift=0.0,
                   centre_shift=0.0):
    """Each group's value of a partially pooled parameter: on the pooling scale, u_g - shift_g ~
    Normal(T^-1(centre) - centre_shift, spread) (truncated at each group's bound on an interval), sampled
    centred (site `_name_u`, holding u_g - shift_g) or non-centred (site `_name_z`) as `grouping` says. The
    shifts are a pivoted coefficient's exponent x log x_ref (per group, and the centre's), else 0."""
    to, back = _pooling_scale(support)
    loc = to(centre) - centre_shift
    with numpyro.plate(grouping.column, num_groups):
        if grouping.centered:
            prior = (dist.TruncatedNormal(loc, spread, high=to(support.upper_bound)) if _is_interval(support)
                     else dist.Normal(loc, spread))
            return back(numpyro.sample(f"_{name}_u", prior) + shift)
        z = numpyro.sample(f"_{name}_z", group_offsets_prior(support))
    if _is_interval(support):
        return pooled_value(support, centre, spread, z)
    return back(loc + spread * z + shift)


def params_at_runs(grouping: Grouping, params: Mapping, codes) -> dict:
    """Per-group parameters gathered to one value per run (shared ones pass through)."""
    varying = set(grouping.varying())
    return {k: (v[..., codes] if k in varying else v) for k, v in params.items()}


_MODELS: dict = {}


def grouped_law_model(law: Law, likelihood: Likelihood, grouping: Grouping):
    """The NumPyro model of a grouped fit: `model(x, stats, y=None, se=None, mask=None, group=None)` with
    `group` the integer group of each run and `stats` holding `group_stats` too (memoised per triple)."""
    from bayescale import saturating

    level_slope = saturating.ENABLED
    key = (id(law), likelihood, grouping, level_slope)
    if key in _MODELS and _MODELS[key][0] is law:
        return _MODELS[key][1]

    def model(x: Mapping, stats: Mapping, y=None, se=None, mask=None, group=None, prev=None):
        num_groups = stats["group_y_min"].shape[0]
        params = sample_grouped_params(law, grouping, stats, x, num_groups, level_slope)
        likelihood.observe(law.mean(params_at_runs(grouping, params, group), x), stats, y=y, se=se, mask=mask,
                           prev=prev)

    model.__name__ = f"{law.name}_grouped_model"
    _MODELS[key] = (law, model)
    return model


def group_params(law: Law, grouping: Grouping, samples: Mapping[str, np.ndarray], stats: Mapping,
                 codes: np.ndarray, key) -> dict[str, np.ndarray]:
    """Every law parameter at each point's group, per draw: (draws, points) arrays, or (draws,) if shared.

    `codes[i]` is point i's group, or -1 for a group the fit has not seen: that point gets parameters
    drawn afresh from the fitted between-group distribution (partial pooling; one new group per point),
    with the pooled data's bounds in data-dependent priors. Independent parameters have no such
    distribution, so a new group is an error there."""
    level = grouping.level
    codes = np.asarray(codes)
    new = codes < 0
    out = {}
    keys = dict(zip(law.params, jax.random.split(key, len(law.params))))
    # Exponents before the coefficients pivoted on them: a new group's coefficient is pooled at its own exponent.
    ordered = [n for n, p in law.params.items() if p.pivot is None] + [n for n, p in law.params.items() if p.pivot]
    for name in ordered:
        param = law.params[name]
        value = np.asarray(samples[name])
        if level[name] == "shared":
            out[name] = value
            continue
        known = value[:, np.where(new, 0, codes)]
        if new.any():
            if level[name] == "independent":
                raise KeyError(f"parameter {name!r} is fitted independently per group, so it has no value for a "
                               f"group the fit has not seen; predict at a fitted group, or fit with partial pooling")
            support = resolve_prior(param.prior, stats).support
            z = jax.random.normal(keys[name], (value.shape[0], int(new.sum())))
            centre, spread = jnp.asarray(samples[f"{name}_mu"])[:, None], jnp.asarray(samples[f"{name}_tau"])[:, None]
            if param.pivot is not None and grouping.pooled_at_reference and not _is_interval(support):
                # log A_new - alpha_new log x_ref ~ Normal(log A_mu - alpha_centre log x_ref, tau)
                source, exponent = param.pivot
                log_ref = _log_reference(stats, {}, source)
                # The exponent's centre as the model's pivot shift reads it (`_pivot_shift`): its pooled centre,
                # the mean over groups of independent values, or the shared value.
                alpha = np.asarray(samples[exponent])
                alpha_centre = (np.asarray(samples[f"{exponent}_mu"]) if level[exponent] == "partial" else
                                alpha.mean(axis=-1) if alpha.ndim > 1 else alpha)
                alpha_new = out[exponent][:, new] if np.ndim(out[exponent]) > 1 else out[exponent][:, None]
                fresh = np.exp(np.log(centre) + (alpha_new - np.asarray(alpha_centre)[:, None]) * log_ref + spread * z)
            else:
                fresh = np.asarray(new_group_value(support, centre, spread, z))
            known[:, new] = fresh
        out[name] = known
    return out
