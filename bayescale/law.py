"""A scaling law, declared once: inputs, parameters with priors, mean function, and where it comes from.

A `Law` is plain data. The engine turns it into a NumPyro model (`bayescale.model`), fits it
(`bayescale.fit`) and predicts with it (`bayescale.predictive`). Parameters are declared and reported in the
user's units (A ~ 400 for Chinchilla, as published); priors on positive parameters are log-scale
distributions, so NUTS samples their logarithm. A prior may depend on the data through `DataStats`
(e.g. the irreducible loss E lies below the smallest observed loss).

Define a new law in a few lines::

    import jax.numpy as jnp
    import numpyro.distributions as dist
    from bayescale import Law, Param

    def mean(p, x):
        return p["E"] + p["A"] * x["D"] ** -p["alpha"]

    my_law = Law(
        name="data_power_law",
        inputs=("D",),
        params={
            "E": Param(lambda s: dist.Uniform(0.0, s["y_min"]), "irreducible loss"),
            "A": Param(dist.LogNormal(6.0, 3.0), "coefficient"),
            "alpha": Param(dist.LogNormal(jnp.log(0.3), 0.5), "exponent"),
        },
        mean=mean,
    )

What the output is and where the law is defined are declared too: `output_scale="log"` (the default) for a
positive output with relative scatter, such as a loss (likelihoods on log y); `output_scale="raw"` for a signed
output that may be zero or negative, such as a difference of losses (likelihoods on y, noise in output units).
Inputs are positive unless listed in `nonnegative_inputs` (zero allowed: the fine-tuning law at D = 0, an
annealing area S2 = 0); the mean function must then be finite, with finite gradients, at zero.

A raw NumPyro model can stand in for params/mean: `Law(name=..., inputs=..., numpyro_model=fn)` where
`fn(x, stats, y=None, se=None, mask=None)` samples its own parameters and an observed site named "y".
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax.numpy as jnp
import numpyro.distributions as dist

from bayescale.compilation import repair_lazy_numpyro_imports

repair_lazy_numpyro_imports()  # before any model runs: see its docstring (ArviZ imported before bayescale)

# "log": positive output, likelihood on log y (relative noise); "raw": signed output, likelihood on y.
OUTPUT_SCALES = ("log", "raw")

PriorSpec = dist.Distribution | Callable[[Mapping[str, Any]], dist.Distribution]


@dataclass(frozen=True)
class Param:
    """One law parameter: its prior (a distribution, or a function of `data_stats`) and its meaning.

    `pivot=(input, exponent)` marks a coefficient that multiplies input^-exponent (A in A / N^alpha). NUTS
    then samples the log of the term's value at the data's geometric-mean input instead of log A, which
    removes the strong, curved correlation between log A and the exponent (A is the loss at N = 1, far from
    any data). The change of variables is exact: the prior on A is the one declared, and A is reported in
    the user's units.
    """

    prior: PriorSpec
    description: str = ""
    pivot: tuple[str, str] | None = None


@dataclass(frozen=True)
class Derivation:
    """An input computed from others, e.g. tokens D = C / (6 N)."""

    target: str
    sources: tuple[str, ...]
    compute: Callable[..., Any]
    description: str = ""


# Identities of LLM training that hold for every law: compute C = 6 N D (Kaplan et al. 2020, Hoffmann et
# al. 2022) and tokens per parameter M = D / N. Laws add their own derivations on top.
STANDARD_DERIVATIONS: tuple[Derivation, ...] = (
    Derivation("D", ("C", "N"), lambda C, N: C / (6.0 * N), "tokens D = C / (6 N)"),
    Derivation("N", ("C", "D"), lambda C, D: C / (6.0 * D), "parameters N = C / (6 D)"),
    Derivation("C", ("N", "D"), lambda N, D: 6.0 * N * D, "compute C = 6 N D"),
    Derivation("M", ("D", "N"), lambda D, N: D / N, "tokens per parameter M = D / N"),
    Derivation("D", ("M", "N"), lambda M, N: M * N, "tokens D = M N"),
)


@dataclass(frozen=True)
class Law:
    """A scaling-law family. `mean(params, x)` maps parameter and input dicts to the predicted output."""

    name: str
    inputs: tuple[str, ...]
    params: Mapping[str, Param] = field(default_factory=dict)
    mean: Callable[[Mapping[str, Any], Mapping[str, Any]], Any] | None = None
    output: str = "loss"
    description: str = ""
    form: str = ""
    reference: str = ""
    derivations: tuple[Derivation, ...] = ()
    numpyro_model: Callable[..., None] | None = None
    nonnegative_inputs: tuple[str, ...] = ()  # inputs that may be zero (e.g. an annealing area); others must be > 0
    output_scale: str = "log"
    # (floor, coefficient, ...) of a saturating law floor + sum of coefficient_i input_i^-exponent_i whose
    # coefficients are pivoted (`Param.pivot`): NUTS samples the floor, the coefficients and their exponents in
    # level-and-slope coordinates (`bayescale.saturating`).
    saturating_term: tuple[str, ...] | None = None

    # `output_scale` declares what the output is: "log" for a positive quantity whose scatter is relative (a
    # loss, an error rate): the likelihood is on log y and the output must be > 0; "raw" for a signed
    # quantity (a difference of losses, a normalised score) that may be zero or negative: the likelihood is
    # on y itself and its noise scale sigma is in output units.

    def __post_init__(self):
        if self.numpyro_model is None and (self.mean is None or not self.params):
            raise ValueError(f"law {self.name!r}: give `params` and `mean`, or a `numpyro_model`")
        if not self.inputs:
            raise ValueError(f"law {self.name!r}: declare at least one input")
        if self.output_scale not in OUTPUT_SCALES:
            raise ValueError(f"law {self.name!r}: output_scale must be one of {OUTPUT_SCALES}, got {self.output_scale!r}")
        known = set(self.inputs).union(*(rule.sources for rule in self.all_derivations()))
        unknown = sorted(set(self.nonnegative_inputs) - known)
        if unknown:
            raise ValueError(f"law {self.name!r}: nonnegative_inputs {unknown} are neither its inputs {self.inputs} "
                             "nor columns its inputs are derived from")
        for name, param in self.params.items():
            if param.pivot is None:
                continue
            source, exponent = param.pivot
            if source not in self.inputs or exponent not in self.params or self.params[exponent].pivot:
                raise ValueError(
                    f"law {self.name!r}: pivot of {name!r} must name an input and an un-pivoted exponent "
                    f"parameter, got {param.pivot}"
                )

        if self.saturating_term is not None:
            floor, *coefficients = self.saturating_term
            pivoted = all(c in self.params and self.params[c].pivot for c in coefficients)
            if floor not in self.params or not coefficients or not pivoted or self.params[floor].pivot:
                raise ValueError(f"law {self.name!r}: saturating_term must name an un-pivoted floor parameter and "
                                 f"one or more pivoted coefficients, got {self.saturating_term}")

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(self.params)

    @property
    def num_params(self) -> int:
        return len(self.params)

    def all_derivations(self) -> tuple[Derivation, ...]:
        return tuple(self.derivations) + STANDARD_DERIVATIONS

    def scaling_axis(self) -> str:
        """The input a ladder of runs scales along: compute C where the inputs give it (C = 6 N D), else the
        first input. Backtests rank runs by it and the discrepancy walk runs along its log."""
        if "C" in self.inputs:
            return "C"
        derivable = {rule.target for rule in self.all_derivations() if set(rule.sources) <= set(self.inputs)}
        return "C" if "C" in derivable else self.inputs[0]

    def with_priors(self, priors: Mapping[str, PriorSpec] | None) -> Law:
        """A copy with some priors replaced; unknown names are an error, not silently ignored."""
        if not priors:
            return self
        mean_priors = {k: v for k, v in priors.items() if k in self.params}
        if not mean_priors:
            return self
        params = dict(self.params)
        for name, prior in mean_priors.items():
            params[name] = dataclasses.replace(params[name], prior=prior)
        return dataclasses.replace(self, params=params)


# Distributions a prior written as text may name (CLI --prior, job files): continuous, univariate, with numeric
# arguments. An allow-list, so that a prior string can only ever build a distribution.
PRIOR_DISTRIBUTIONS = (
    "Beta", "Cauchy", "Exponential", "Gamma", "HalfCauchy", "HalfNormal", "InverseGamma", "Laplace", "LogNormal",
    "LogUniform", "Normal", "StudentT", "TruncatedNormal", "Uniform", "Weibull",
)


def prior_from_text(expr: str, what: str = "prior") -> dist.Distribution:
    """A numpyro distribution from text such as "LogNormal(-1.2, 0.5)": one of `PRIOR_DISTRIBUTIONS` with
    numeric arguments, checked (scale > 0, low < high, ...). `what` names the source in error messages."""
    import ast

    try:
        tree = ast.parse(str(expr).strip(), mode="eval").body
    except SyntaxError:
        raise ValueError(f"{what}: not a distribution call such as LogNormal(-1.2, 0.5)") from None
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name)):
        raise ValueError(f"{what}: not a distribution call such as LogNormal(-1.2, 0.5)")
    if tree.func.id not in PRIOR_DISTRIBUTIONS:
        raise ValueError(f"{what}: {tree.func.id!r} is not one of the distributions a prior may use: "
                         f"{', '.join(PRIOR_DISTRIBUTIONS)}")
    try:
        args = [float(ast.literal_eval(a)) for a in tree.args]
        kwargs = {k.arg: float(ast.literal_eval(k.value)) for k in tree.keywords}
    except (ValueError, TypeError, SyntaxError):
        raise ValueError(f"{what}: the arguments must be numbers") from None
    family = getattr(dist, tree.func.id)
    try:
        family(*args, **kwargs, validate_args=True)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{what}: {err}") from None
    return family(*args, **kwargs)


def resolve_prior(prior: PriorSpec, stats: Mapping[str, Any]) -> dist.Distribution:
    return prior(stats) if callable(prior) and not isinstance(prior, dist.Distribution) else prior


def data_stats(y, mask=None, x=None) -> dict[str, Any]:
    """Summaries of the data that data-dependent priors may use (vmappable: jnp only): the smallest and
    largest observed output, and with inputs `x` the log geometric mean of each input's positive values
    (`input_log_mean`: where the data lie on an input, for priors in the input's units)."""
    y = jnp.asarray(y)
    if mask is None:
        mask = jnp.ones(y.shape, bool)
    stats = {
        "y_min": jnp.min(jnp.where(mask, y, jnp.inf)),
        "y_max": jnp.max(jnp.where(mask, y, -jnp.inf)),
    }
    if x is not None:
        stats["x_log_mean"] = {name: log_geometric_mean(values, mask) for name, values in x.items()}
    return stats


def log_geometric_mean(values, mask=None):
    """Mean log of the positive entries of `values` (where `mask`): an input a law allows at zero has no log
    there, and a zero says nothing about the input's scale."""
    values = jnp.asarray(values)
    used = values > 0 if mask is None else jnp.asarray(mask, bool) & (values > 0)
    logs = jnp.log(jnp.where(used, values, 1.0))
    return jnp.sum(jnp.where(used, logs, 0.0)) / jnp.maximum(jnp.sum(used), 1)


def input_log_mean(stats: Mapping[str, Any], name: str):
    """log of the geometric mean of input `name` over the data, for a prior in that input's units (a
    midpoint, a break, an offset). The prior then moves with the data's units instead of assuming one."""
    found = stats.get("x_log_mean", {})
    if name not in found:
        raise KeyError(f"a prior reads where the data lie on input {name!r}, but the data statistics have no "
                       f"such input (they have {sorted(found)})")
    return found[name]


# ---- the catalogue registry: every Law object defined in a module of bayescale.models ----

_REGISTERED: dict[str, Law] = {}


def register_law(law: Law) -> Law:
    """Make a user-defined law findable by name (`get_law`, `bayescale fit --law NAME`, `load`)."""
    _REGISTERED[law.name] = law
    return law


def laws() -> dict[str, Law]:
    """All laws of the catalogue (`bayescale.models`) and those registered, by name."""
    import bayescale.models as catalogue

    found: dict[str, Law] = {}
    for info in sorted(pkgutil.iter_modules(catalogue.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"bayescale.models.{info.name}")
        for value in vars(module).values():
            if isinstance(value, Law):
                found.setdefault(value.name, value)
    found.update(_REGISTERED)
    return dict(sorted(found.items()))


# The catalogue's listing as JSON next to the law modules: `bayescale laws` reads it without importing JAX
# (the laws themselves are jax.numpy functions, and importing them costs seconds). A test regenerates it from
# the live catalogue and fails when it is stale: `python -m bayescale.law` rewrites it.
CATALOGUE_INDEX = "catalogue.json"


def likelihood_scale(law: Law) -> str:
    """Where the law's likelihood lives: "log y" for a positive output, "y" for a signed one."""
    if law.numpyro_model is not None:
        return "(own model)"
    return "log y" if law.output_scale == "log" else "y"


def catalogue_listing(catalogue: Mapping[str, Law] | None = None) -> dict[str, dict[str, str]]:
    """One row per law (inputs, output, likelihood scale, inputs allowed at zero, parameters, form, paper,
    description), as `bayescale laws` prints it; by default the catalogue without registered laws."""
    if catalogue is None:
        catalogue = {name: law for name, law in laws().items() if name not in _REGISTERED}
    return {
        name: {"inputs": ", ".join(law.inputs), "output": law.output, "scale": likelihood_scale(law),
               "zero_allowed": ", ".join(law.nonnegative_inputs),
               "parameters": ", ".join(law.param_names) or "(numpyro model)",
               "form": law.form, "reference": law.reference, "description": law.description}
        for name, law in catalogue.items()
    }


def write_catalogue_index() -> str:
    """Rewrite the catalogue's listing (`CATALOGUE_INDEX` in the models package) from the live catalogue."""
    import json

    import bayescale.models as catalogue

    path = f"{catalogue.__path__[0]}/{CATALOGUE_INDEX}"
    with open(path, "w", encoding="utf-8") as out:
        json.dump(catalogue_listing(), out, indent=1, sort_keys=True, ensure_ascii=False)
        out.write("\n")
    return path


def get_law(name: str | Law) -> Law:
    if isinstance(name, Law):
        return name
    available = laws()
    if name not in available:
        raise KeyError(f"unknown law {name!r}; available: {', '.join(available)}")
    return available[name]


if __name__ == "__main__":
    # Through the imported module: run as a script, this file's Law class is not the one the laws are made of.
    from bayescale.law import write_catalogue_index as write

    print(f"wrote {write()}")
