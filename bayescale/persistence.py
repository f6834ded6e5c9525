"""Save a fit to one NetCDF file and load it back without refitting.

The file is the fit's ArviZ DataTree (`DataTree.to_netcdf`, h5netcdf engine) with the law's declaration
(name, inputs, parameters with descriptions and priors, form, source), the likelihood, the prior overrides, the sampler settings, the seed, the MAP and the run provenance as JSON in
the root's `bayescale` attribute. Laws are stored by name: catalogue laws and laws registered with
`bayescale.register_law` load by themselves; any other law is passed to `load(path, law=...)`.
"""

from __future__ import annotations

import json
import warnings
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


def law_declaration(law: Law) -> dict[str, Any]:
    """What the file records of the law: enough to read the posterior without the code, and to refuse a
    law whose inputs or parameters differ from the ones the fit was made with."""
    return {
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
        "law_declaration": law_declaration(fit.law),
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
              pass_as: str = "load(path, law=<the Law>)") -> Law:
    """The law a saved fit was made with: `given`, else the catalogue's (or registered) law of the saved
    name. Refused, naming the file, when the name, inputs or parameters differ from `declaration` (what
    `law_declaration` recorded at save time): the posterior would be read against the wrong law."""
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
    return given


def load(path: str | Path, law: Law | None = None):
    from bayescale.fit import Fit

    path = Path(path)
    dt, meta = read_fit_file(path)
    law = saved_law(path, meta["law_declaration"], law)
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
        y=np.asarray(dt.observed_data["y"]),
        se=np.asarray(constant["se"]) if runs_meta["has_se"] else None,
        labels=np.asarray(runs_meta["labels"]),
        sources=runs_meta["sources"],
        output=runs_meta["output"],
        groups=np.asarray(constant["group"]) if meta.get("grouping") else None,
        group_labels=tuple(runs_meta.get("group_labels", ())),
        group_column=runs_meta.get("group_column"),
    )
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
