"""bayescale: Bayesian scaling-law inference with NumPyro and JAX.

    import bayescale as bs
    runs = bs.load_example("chinchilla")
    fit = bs.fit(runs, "chinchilla", columns={"N": "Model Size", "C": "Training FLOP"}, likelihood="student_t")
    fit.summary()
    bs.predict(fit, {"N": 70e9, "D": 1.4e12}).quantiles()
    bs.optimal_allocation(fit, compute=5.76e23).quantiles()
"""

from importlib import metadata as _metadata

from bayescale.compilation import configure as _configure

_configure()

from bayescale.diagnostics import ConvergenceWarning, Diagnostics, Thresholds, check_convergence  # noqa: E402
from bayescale.examples import EXAMPLES, load_example  # noqa: E402
from bayescale.fit import Fit, fit  # noqa: E402
from bayescale.misfit import Misfit, MisfitWarning, check_misfit  # noqa: E402
from bayescale.inference import SamplerSettings  # noqa: E402
from bayescale.retries import RetryPolicy  # noqa: E402
from bayescale.law import Derivation, Law, Param, get_law, laws, register_law  # noqa: E402
from bayescale.likelihood import Likelihood  # noqa: E402
from bayescale.discrepancy import Discrepancy  # noqa: E402
from bayescale.optimal import Allocation, optimal_allocation  # noqa: E402
from bayescale.persistence import load, save  # noqa: E402
from bayescale.posterior import draws, summary  # noqa: E402
from bayescale.predictive import Prediction, predict  # noqa: E402
from bayescale.prior_predictive import PriorPredictive, prior_predictive  # noqa: E402
from bayescale.runs import DataError, Runs, read_table, runs_from_table  # noqa: E402
from bayescale.evidence import Evidence, log_evidence  # noqa: E402
from bayescale.compare import compare, format_notes  # noqa: E402
from bayescale.averaging import average_downstream, average_predict  # noqa: E402
from bayescale.backtest import Backtest, backtest  # noqa: E402

try:  # one version source: pyproject.toml, through the installed package's metadata
    __version__ = _metadata.version("bayescale")
except _metadata.PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"

__all__ = [
    "Allocation", "ConvergenceWarning", "DataError", "Derivation", "Diagnostics", "EXAMPLES", "Fit", "Law",
    "Discrepancy", "Likelihood", "Param", "Prediction", "Runs", "SamplerSettings", "Thresholds", "check_convergence", "draws",
    "fit", "get_law", "laws", "load", "load_example", "optimal_allocation", "predict", "read_table",
    "register_law", "runs_from_table", "save", "summary",
    "prior_predictive", "PriorPredictive",
    "Backtest", "backtest", "Evidence", "average_downstream", "average_predict", "compare", "format_notes", "log_evidence",
    "Misfit", "MisfitWarning", "check_misfit", "RetryPolicy",
]
