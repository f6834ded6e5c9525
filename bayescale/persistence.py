"""Save a fit to one NetCDF file and load it back without refitting.

The file is the fit's ArviZ DataTree (`DataTree.to_netcdf`, h5netcdf engine) with the law's declaration
(name, inputs, parameters with descriptions and priors, form, source), the likelihood, the prior overrides, the sampler settings, the seed, the MAP and the run provenance as JSON in
the root's `bayescale` attribute. Laws are stored by name: catalogue laws and laws registered with
`bayescale.register_law` load by themselves; any other law is passed to `load(path, law=...)`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import numpyro.distributions as dist

from bayescale.diagnostics import check_convergence
from bayescale.grouping import Grouping
from bayescale.inference import SamplerSettings
from bayescale.law import Law, get_law
from bayescale.likelihood import Likelihood
from bayescale.posterior import observed_var
from bayescale.misfit import applies as misfit_applies, check_misfit
from bayescale.runs import Runs

FORMAT_VERSION = 1


def prior_to_json(prior) -> dict[str, Any]:
    if isinstance(prior, dist.Distribution) and type(prior).__module__.startswith("numpyro.distributions"):
        args = {k: np.asarray(getattr(prior, k)).tolist() for k in prior.arg_constraints if hasattr(prior, k)}
        return {"distribution": type(prior).__name__, "args": args}
    return {"unserializable": repr(prior)}


def prior_from_json(spec: dict[str, Any]):
    if "distribution" not in spec:
        return None
    return getattr(dist, spec["distribution"])(**{k: np.asarray(v) for k, v in spec["args"].items()})


# Probe points of a law's own derivations: every source at these values (positive, below 1 and above, so
# fractions and counts both give finite values); the targets they give are recorded in the fingerprint.
_DERIVATION_PROBES = (0.37, 2.5e9)
FINGERPRINT_RTOL = 1e-6


def law_fingerprint(law: Law, params: Mapping[str, Any], x: Mapping[str, Any], runs: int = 8) -> dict[str, Any] | None:
    """What the law computes, recorded numerically so a changed formula is caught at load time (a law with
    the same name, inputs and parameters but another mean function or derivation would otherwise read the
    posterior against the wrong formula). The mean function at one posterior draw (`params`: the first value
    of each parameter) and the first `runs` fitted runs (`x`), and each of the law's own derivations at fixed
    probe values. Comparing numbers rather than source text survives refactoring that keeps the formula.
    None for a law given as a raw NumPyro model, or when the draw or inputs are not at hand."""
    if law.mean is None or any(name not in params for name in law.params) or any(k not in x for k in law.inputs):
        return None
    point = {name: float(np.ravel(np.asarray(params[name]))[0]) for name in law.params}
    inputs = {k: np.asarray(x[k], float).ravel()[:runs] for k in law.inputs}
    values = np.asarray(law.mean(point, inputs), float)
    return {"params": point, "inputs": {k: v.tolist() for k, v in inputs.items()},
            "values": np.broadcast_to(values, next(iter(inputs.values())).shape).tolist(),
            "derived": _derived_at_probes(law)}


def _derived_at_probes(law: Law) -> dict[str, float | None]:
    """Each of the law's own derivations with every source at each probe value (None where undefined)."""
    derived = {}
    for rule in law.derivations:
        for probe in _DERIVATION_PROBES:
            try:
                value = float(np.asarray(rule.compute(*[probe] * len(rule.sources))))
            except Exception:  # noqa: BLE001  a derivation undefined at the probe is recorded as such
                value = None
            derived[f"{rule.target}<-{','.join(rule.sources)}@{probe:g}"] = (
                value if value is not None and np.isfinite(value) else None)
    return derived


def fingerprint_mismatch(law: Law, recorded: Mapping[str, Any] | None) -> str | None:
    """Why `law` does not compute what `recorded` (a `law_fingerprint`) says, or None when it does."""
    if not recorded or law.mean is None:
        return None
    values = np.asarray(law.mean(recorded["params"], {k: np.asarray(v) for k, v in recorded["inputs"].items()}), float)
    expected = np.asarray(recorded["values"], float)
    values = np.broadcast_to(values, expected.shape)
    if not np.allclose(values, expected, rtol=FINGERPRINT_RTOL, atol=0.0, equal_nan=True):
        worst = int(np.nanargmax(np.abs(values - expected) / np.maximum(np.abs(expected), 1e-300)))
        return (f"its mean function gives {values[worst]:.6g} where the saved law gave {expected[worst]:.6g} "
                f"(same parameters {recorded['params']}, same inputs)")
    now = _derived_at_probes(law)
    saved = recorded.get("derived", {})
    changed = sorted(key for key in set(now) | set(saved)
                     if (now.get(key) is None) != (saved.get(key) is None)
                     or (now.get(key) is not None and not np.isclose(now[key], saved[key], rtol=FINGERPRINT_RTOL, atol=0.0)))
    if changed:
        return f"its derivations differ from the saved law's (at {', '.join(changed[:3])})"
    return None


def law_declaration(law: Law, fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the file records of the law: enough to read the posterior without the code, and to refuse a
    law whose inputs, parameters or formula (`law_fingerprint`) differ from the ones the fit was made with."""
    return {
        "fingerprint": fingerprint,
        "name": law.name,
        "inputs": list(law.inputs),
        "output": law.output,
        "form": law.form,
        "reference": law.reference,
        "params": {
            name: {"description": p.description, "prior": repr(p.prior), "pivot": list(p.pivot) if p.pivot else None}
            for name, p in law.params.items()
        },
    }


def save(fit, path: str | Path) -> Path:
    path = Path(path)
    meta = {
        "format_version": FORMAT_VERSION,
        "law": fit.law.name,
        "law_declaration": law_declaration(fit.law, law_fingerprint(
            fit.law, {k: fit.data.posterior[k].values for k in fit.law.params if k in fit.data.posterior},
            {k: fit.data.constant_data[k].values for k in fit.law.inputs if k in fit.data.constant_data})),
        "likelihood": fit.likelihood.to_dict(),
        "priors": {name: prior_to_json(p) for name, p in fit.priors.items()},
        "settings": fit.settings.to_dict(),
        "seed": fit.seed,
        "map": fit.map,
        "runs": {
            "labels": [str(v) for v in fit.runs.labels],
            "sources": fit.runs.sources,
            "output": fit.runs.output,
            "has_se": fit.runs.se is not None,
            "group_column": fit.runs.group_column,
            "group_labels": [str(g) for g in fit.runs.group_labels],
        },
        "grouping": fit.grouping.to_dict() if fit.grouping is not None else None,
        "attempts": list(getattr(fit, "attempts", [])),
    }
    dt = fit.data.copy()
    dt.attrs["bayescale"] = json.dumps(meta)
    tmp = path.with_name(path.name + ".tmp")
    dt.to_netcdf(tmp, engine="h5netcdf")
    tmp.replace(path)  # atomic: a killed save never leaves a half-written fit under the final name
    return path


def read_fit_file(path: str | Path, attribute: str = "bayescale", kind: str = "fit", version: int = FORMAT_VERSION):
    """The DataTree of a saved fit and its metadata (the JSON in root attribute `attribute`), refused when
    the file's format version is not `version`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no fit file at {path}")
    dt = az.from_netcdf(path, engine="h5netcdf")
    if attribute not in dt.attrs:
        raise ValueError(f"{path} is not a bayescale {kind} (no {attribute!r} attribute)")
    meta = json.loads(dt.attrs[attribute])
    if meta.get("format_version") != version:
        raise ValueError(f"{path}: {kind} saved in file format {meta.get('format_version')}; this bayescale reads "
                         f"format {version}: refit and save again")
    return dt, meta


def saved_law(path: str | Path, declaration: dict[str, Any], given: Law | None, *, role: str = "law",
              pass_as: str = "load(path, law=<the Law>)", allow_changed_law: bool = False) -> Law:
    """The law a saved fit was made with: `given`, else the catalogue's (or registered) law of the saved
    name. Refused, naming the file, when the name, inputs or parameters differ from `declaration` (what
    `law_declaration` recorded at save time), or when it computes something else (`law_fingerprint`: another
    formula or derivation under the same name): the posterior would be read against the wrong law.
    `allow_changed_law=True` turns the last refusal into a warning (e.g. a law corrected on purpose)."""
    name = declaration["name"]
    if given is None:
        try:
            given = get_law(name)
        except KeyError:
            raise KeyError(f"{path}: the {role} {name!r} is not in the catalogue; pass {pass_as}") from None
    if given.name != name or list(given.inputs) != list(declaration["inputs"]) or list(given.params) != list(declaration["params"]):
        raise ValueError(
            f"{path}: the fit was made with {role} {name!r} of inputs {list(declaration['inputs'])} and parameters "
            f"{list(declaration['params'])}; {role} {given.name!r} has inputs {list(given.inputs)} and parameters "
            f"{list(given.params)}"
        )
    mismatch = fingerprint_mismatch(given, declaration.get("fingerprint"))
    if mismatch:
        message = (f"{path}: the {role} {name!r} given now is not the one the fit was made with: {mismatch}. "
                   "Forecasts from this posterior would use another formula")
        if not allow_changed_law:
            raise ValueError(message + "; pass allow_changed_law=True to load it anyway (at your own risk), or refit")
        warnings.warn(message + " (allow_changed_law=True)", UserWarning, stacklevel=3)
    return given


def _with_current_sites(dt, law: Law, runs: Runs):
    """The DataTree with the sites the law's model samples now where a saved fit predates them: the
    level-and-slope site of a saturating term (`bayescale.saturating`), computed exactly from the saved
    parameters, so that evidence and prior terms of an old fit use the model as it is."""
    from bayescale import saturating
    from bayescale.fit import model_inputs
    from bayescale.model import saturating_site_values

    if not saturating.ENABLED or runs.groups is not None:
        return dt  # a grouped fit's model keeps the sites of its saved grouping (`Grouping.pooled_at_reference`)

    (x, stats), _ = model_inputs(runs)
    posterior = dt.posterior
    found = saturating_site_values(law, {n: posterior[n].values for n in law.params if n in posterior}, x, stats) \
        if all(n in posterior for n in law.params) else None
    if found is None or found[0] in posterior:
        return dt
    site, values = found
    dt = dt.copy()
    dt["posterior"] = dt.posterior.to_dataset().assign({site: (("chain", "draw", f"{site}_dim_0"), values)})
    return dt


def load(path: str | Path, law: Law | None = None, *, allow_changed_law: bool = False):
    """A saved fit. `law`: the Law, for laws neither in the catalogue nor registered; it must have the saved
    name, inputs and parameters, and compute what the saved law computed (a formula changed since the save
    is refused unless `allow_changed_law=True`)."""
    from bayescale.fit import Fit

    path = Path(path)
    dt, meta = read_fit_file(path)
    law = saved_law(path, meta["law_declaration"], law, allow_changed_law=allow_changed_law)
    priors = {}
    for name, spec in meta["priors"].items():
        prior = prior_from_json(spec)
        if prior is None:
            warnings.warn(f"{path}: the prior on {name!r} ({spec['unserializable']}) was not saved; using the law's default", stacklevel=2)
        else:
            priors[name] = prior
    likelihood = Likelihood(**meta["likelihood"]).with_priors(priors)
    law = law.with_priors(priors)
    constant = dt.constant_data
    runs_meta = meta["runs"]
    runs = Runs(
        x={k: np.asarray(constant[k]) for k in law.inputs},
        y=np.asarray(dt.observed_data[observed_var(dt)]),
        se=np.asarray(constant["se"]) if runs_meta["has_se"] else None,
        labels=np.asarray(runs_meta["labels"]),
        sources=runs_meta["sources"],
        output=runs_meta["output"],
        groups=np.asarray(constant["group"]) if meta.get("grouping") else None,
        group_labels=tuple(runs_meta.get("group_labels", ())),
        group_column=runs_meta.get("group_column"),
    )
    if meta.get("grouping") is None:
        dt = _with_current_sites(dt, law, runs)
    return Fit(
        law=law,
        likelihood=likelihood,
        data=dt,
        runs=runs,
        diagnostics=check_convergence(dt, params=[n for n in dt.posterior.data_vars if not str(n).startswith("_")]),
        settings=SamplerSettings(**meta["settings"]),
        seed=meta["seed"],
        map=meta["map"],
        priors=priors,
        grouping=Grouping.from_dict(meta["grouping"]) if meta.get("grouping") else None,
        # Recomputed like the diagnostics (deterministic: the same values as at fit time), without warning.
        misfit=check_misfit(dt, runs.labels) if misfit_applies(dt, likelihood.family) else None,
        attempts=list(meta.get("attempts", [])),
    )
