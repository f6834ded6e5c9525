"""bayescale: Bayesian scaling-law inference with NumPyro and JAX.

    import bayescale as bs
    runs = bs.load_example("chinchilla")
    fit = bs.fit(runs, "chinchilla", columns={"N": "Model Size", "C": "Training FLOP"}, likelihood="student_t")
    fit.summary()
    bs.predict(fit, {"N": 70e9, "D": 1.4e12}).quantiles()
    bs.optimal_allocation(fit, compute=5.76e23).quantiles()
"""

import sys as _sys
import types as _types
from importlib import import_module as _import_module
from importlib import metadata as _metadata

from bayescale.compilation import configure as _configure

_configure()

# Names are loaded on first use (PEP 562), so `import bayescale` and the CLI's `--help` do not pay for JAX,
# NumPyro and ArviZ until something needs them.
_EXPORTS = {
    "bayescale.diagnostics": ("ConvergenceWarning", "Diagnostics", "Thresholds", "check_convergence"),
    "bayescale.examples": ("EXAMPLES", "example_file", "load_example"),
    "bayescale.fit": ("Fit", "fit"),
    "bayescale.misfit": ("Misfit", "MisfitWarning", "check_misfit"),
    "bayescale.inference": ("SamplerSettings",),
    "bayescale.retries": ("RetryPolicy",),
    "bayescale.law": ("Derivation", "Law", "Param", "get_law", "laws", "register_law"),
    "bayescale.likelihood": ("Likelihood",),
    "bayescale.discrepancy": ("Discrepancy",),
    "bayescale.optimal": ("Allocation", "optimal_allocation"),
    "bayescale.persistence": ("load", "save"),
    "bayescale.posterior": ("draws", "summary"),
    "bayescale.predictive": ("Prediction", "predict"),
    "bayescale.prior_predictive": ("PriorPredictive", "PriorWarning", "prior_predictive"),
    "bayescale.runs": ("DataError", "Runs", "read_table", "runs_from_table"),
    "bayescale.evidence": ("Evidence", "log_evidence"),
    "bayescale.compare": ("compare", "format_notes"),
    "bayescale.averaging": ("average_downstream", "average_predict"),
    "bayescale.backtest": ("Backtest", "backtest"),
    "bayescale.batch": ("BatchFit", "fit_batch"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(_import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    try:  # a submodule: bs.batch, bs.inference, ...
        return _import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE))


class _Package(_types.ModuleType):
    """Importing a submodule binds it on its package: `import bayescale.fit` would make `bayescale.fit` the
    module, not the function. Names exported from a submodule of the same name (fit, backtest, compare,
    prior_predictive) keep the function."""

    def __setattr__(self, name, value):
        if isinstance(value, _types.ModuleType) and _WHERE.get(name) == f"{__name__}.{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


try:  # one version source: pyproject.toml, through the installed package's metadata
    __version__ = _metadata.version("bayescale")
except _metadata.PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"

__all__ = sorted(_WHERE)
