"""Grouped fits: one law over several setups (data sets, architectures, tokenizers), some parameters shared
across groups and others per group.

Each law parameter gets a pooling level:
- "shared": one value for all groups (e.g. the exponents, when the setups differ only in constants);
- "partial" (the default): one value per group, drawn from a common distribution whose centre and spread
  are fitted (a hierarchical prior), so a group with few runs borrows strength from the others;
- "independent": one value per group, each with the law's own prior, no borrowing.

Partial pooling is done on each parameter's unconstrained scale, non-centred (which NUTS needs when groups
are few or agree closely): with T the bijection from the real line onto the prior's support,

    name_mu ~ the law's prior on `name`            (the centre, in the user's units)
    name_tau ~ HalfNormal(scale)                    (the spread between groups, unconstrained scale)
    name[g] = T(T^-1(name_mu) + name_tau * z_g),    z_g ~ Normal(0, 1)

For a positive parameter T = exp, so `name_tau` is the spread of log(name) between groups: 0.1 means about
10%. A parameter whose prior is an interval (l, b) is pooled on log(name - l), truncated above at each
group's own bound: priors that depend on the data read each group's data there (the irreducible loss E
lies below that group's smallest loss), and the loosest group's bound for the centre (`pooled_value`). A new group, not in the fit, is predicted by a
fresh z from the same distribution (`group_params`), with the pooled data's bounds.

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
from numpyro.distributions.transforms import biject_to

from bayescale.law import Law, resolve_prior
from bayescale.likelihood import Likelihood
from bayescale.model import sample_pivoted

POOLING_LEVELS = ("partial", "independent", "shared")


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

    @property
    def level(self) -> dict[str, str]:
        return dict(self.levels)

    def varying(self) -> tuple[str, ...]:
        return tuple(name for name, level in self.levels if level != "shared")

    def to_dict(self) -> dict:
        return {"column": self.column, "levels": dict(self.levels), "scale": self.scale, "outputs": self.outputs}

    @classmethod
    def from_dict(cls, spec: Mapping) -> Grouping:
        return cls(column=spec["column"], levels=tuple(spec["levels"].items()), scale=float(spec["scale"]),
                   outputs=bool(spec.get("outputs", False)))


def make_grouping(
    law: Law,
    column: str,
    pooling: str | Mapping[str, str] = "partial",
    shared: Sequence[str] = (),
    scale: float = 0.5,
    outputs: bool = False,
) -> Grouping:
    """A `Grouping` from user options: `pooling` is one level for all parameters or {parameter: level}
    (parameters not named get "partial"); `shared` names parameters that are one value for all groups."""
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
    return Grouping(column=column, levels=tuple(levels.items()), scale=float(scale), outputs=outputs)


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


def _pivot_shift(law: Law, name: str, values: Mapping, centres: Mapping, x, centre: bool):
    """log A_ref = log A - exponent * log x_ref: the shift that decorrelates a coefficient from its exponent
    (see `bayescale.law.Param`). The centre of a pooled coefficient shifts by the exponent's centre."""
    source, exponent = law.params[name].pivot
    e = centres.get(exponent, values[exponent]) if centre else values[exponent]
    e = jnp.mean(e) if (centre and jnp.ndim(e)) else e
    return e * jnp.mean(jnp.log(x[source]))


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


def sample_grouped_params(law: Law, grouping: Grouping, stats: Mapping, x: Mapping, num_groups: int) -> dict:
    """The law's parameters, each a scalar ("shared") or a vector over groups, as NumPyro sample sites."""
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
    for name in ordered:
        param = law.params[name]
        pooled_prior = resolve_prior(param.prior, stats)
        pivoted = param.pivot is not None
        if level[name] == "shared":
            shift = _pivot_shift(law, name, values, centres, x, centre=True) if pivoted else None
            values[name] = _sample_value(name, pooled_prior, shift)
        elif level[name] == "independent":
            group_prior = resolve_prior(param.prior, group).expand([num_groups])
            shift = _pivot_shift(law, name, values, centres, x, centre=False) if pivoted else None
            with numpyro.plate(grouping.column, num_groups):
                values[name] = _sample_value(name, group_prior, shift)
        else:
            shift = _pivot_shift(law, name, values, centres, x, centre=True) if pivoted else None
            centres[name] = _sample_value(f"{name}_mu", resolve_prior(param.prior, centre_stats), shift)
            spread = numpyro.sample(f"{name}_tau", dist.HalfNormal(grouping.scale))
            support = resolve_prior(param.prior, group).support
            with numpyro.plate(grouping.column, num_groups):
                z = numpyro.sample(f"_{name}_z", group_offsets_prior(support))
            values[name] = numpyro.deterministic(name, pooled_value(support, centres[name], spread, z))
    return values


def params_at_runs(grouping: Grouping, params: Mapping, codes) -> dict:
    """Per-group parameters gathered to one value per run (shared ones pass through)."""
    varying = set(grouping.varying())
    return {k: (v[..., codes] if k in varying else v) for k, v in params.items()}


_MODELS: dict = {}


def grouped_law_model(law: Law, likelihood: Likelihood, grouping: Grouping):
    """The NumPyro model of a grouped fit: `model(x, stats, y=None, se=None, mask=None, group=None)` with
    `group` the integer group of each run and `stats` holding `group_stats` too (memoised per triple)."""
    key = (id(law), likelihood, grouping)
    if key in _MODELS and _MODELS[key][0] is law:
        return _MODELS[key][1]

    def model(x: Mapping, stats: Mapping, y=None, se=None, mask=None, group=None, prev=None):
        num_groups = stats["group_y_min"].shape[0]
        params = sample_grouped_params(law, grouping, stats, x, num_groups)
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
    keys = jax.random.split(key, len(law.params))
    for key_param, (name, param) in zip(keys, law.params.items()):
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
            z = jax.random.normal(key_param, (value.shape[0], int(new.sum())))
            fresh = np.asarray(new_group_value(support, jnp.asarray(samples[f"{name}_mu"])[:, None],
                                               jnp.asarray(samples[f"{name}_tau"])[:, None], z))
            known[:, new] = fresh
        out[name] = known
    return out
