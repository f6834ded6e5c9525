"""Effective-capacity variants of Chinchilla: the parameter count N is replaced by what the parameters are
worth, with one extra input that says how they were trained or arranged.

- `precision` (Kumar et al. 2024, "Scaling Laws for Precision", arXiv:2411.04330): training in P bits leaves
  N_eff = N (1 - exp(-P / gamma)) effective parameters; L = E + A N_eff^-alpha + B D^-beta. The paper fits
  separate gammas for weights, activations and KV cache; here one precision input P (bits) and one gamma.
  gamma: LogNormal(log 3, 0.7) (a few bits: 16-bit training is near-lossless, 2-4 bits costs much).
- `parscale` (Chen et al. 2025, "Parallel Scaling Law for Language Models", arXiv:2505.10475): P parallel
  streams act like N (k log P + 1) parameters; L = E + (A / (N (k log P + 1)))^alpha, fitted as
  E + c N_eff^-alpha with c = A^alpha: sampling log A, the exponent multiplied it, and the curved ridge between
  them gave NUTS divergences; c is pivoted like Chinchilla's coefficients (`Param.pivot`). A = c^(1/alpha).
  E, c and alpha are sampled in level-and-slope coordinates (`saturating_term`, `bayescale.saturating`): with
  N over one decade the floor trades off against the exponent along a curved ridge (divergences in 11 of 21
  simulated data sets at the package defaults before this).
  k: LogNormal(log 0.4, 1) (the paper's fits give k of a few tenths). c: LogNormal(log 50, 3) (A of order
  1e8 parameters and alpha 0.2-0.3 give c ~ 40-250), alpha exponent prior.
- `moe` (Clark et al. 2022, "Unified Scaling Laws for Routed Language Models", arXiv:2202.01169, eq. 7 and
  the saturating transform of eq. 9): log L = a log N + b log E' + c log N log E' + d with
  1/E' = 1 / (E - 1 + (1/(E_start - 1) - 1/E_max)^-1) + 1/E_max, for E experts (input `experts`; E' ~ E for few experts,
  saturating at E_max). Natural logs, raw N. a, b: Normal(-0.1, 0.1) (loss falls with size and experts),
  c: Normal(0, 0.05) (interaction: gains from experts shrink with size when c > 0), d: Normal(3, 2)
  (log loss at N = E' = 1), E_start: 1 + LogNormal(0, 1) experts, E_max: LogNormal(log 300, 1.5).
- `vocabulary` (Tao et al. 2024, "Scaling Laws with Vocabulary", arXiv:2407.13623, eq. 5): separate terms for
  non-vocabulary parameters N_nv, vocabulary parameters N_v (= vocabulary size x embedding width) and data D:
  L = E + A1 / N_nv^alpha1 + A2 / N_v^alpha2 + B / D^beta. Tao et al. fit the unigram-normalised loss, which
  can be negative; this law models a positive loss (the raw loss, or the normalised loss plus a constant).
  Priors as Chinchilla's, per term.
- `precision`, `vocabulary` and `average_params` sample their floor, coefficients and exponents in the
  level-and-slope coordinates of `bayescale.saturating`, like Chinchilla (for `precision` the level is taken at
  the data's middle N, not N_eff: still an exact change of variables).
- `average_params` (Jin et al. 2025, "The Journey Matters: Average Parameter Count over Pre-training Unifies
  Sparse and Dense Scaling Laws", arXiv:2501.12486): a model pruned during training is worth the average of
  its parameter count over training, N_avg; L = E + A N_avg^-alpha + B D^-beta holds for dense and sparse
  runs alike. N_avg is a column, or derived from the dense size N, the final sparsity and the pruning window
  (fractions of training) under the cubic schedule of Zhu & Gupta 2017, s(t) = sparsity (1 - (1 - (t - start)
  / (end - start))^3): the mean sparsity is sparsity (0.75 (end - start) + 1 - end), and
  N_avg = N (1 - mean sparsity). A dense run has sparsity 0. Priors as Chinchilla's.
"""

import jax.numpy as jnp
import numpyro.distributions as dist

from bayescale.law import Derivation, Law, Param
from bayescale.models import priors


def _term(coefficient, exponent, value):
    return jnp.exp(jnp.log(coefficient) - exponent * jnp.log(value))


def _precision_mean(p, x):
    n_eff = -x["N"] * jnp.expm1(-x["P"] / p["gamma"])
    return p["E"] + _term(p["A"], p["alpha"], n_eff) + _term(p["B"], p["beta"], x["D"])


PRECISION = Law(
    name="precision",
    inputs=("N", "D", "P"),
    params={
        "E": Param(priors.below_min_output, "irreducible loss, nats/token"),
        "A": Param(priors.coefficient(), "parameter-limited loss coefficient", pivot=("N", "alpha")),
        "alpha": Param(priors.exponent(), "exponent of effective parameters"),
        "B": Param(priors.coefficient(), "data-limited loss coefficient", pivot=("D", "beta")),
        "beta": Param(priors.exponent(), "exponent of tokens D"),
        "gamma": Param(dist.LogNormal(jnp.log(3.0), 0.7), "precision scale (bits): N_eff = N (1 - exp(-P/gamma))"),
    },
    mean=_precision_mean,
    saturating_term=("E", "A", "B"),
    description="Chinchilla with precision-limited effective parameters (P: training precision, bits)",
    form="L = E + A N_eff^-alpha + B D^-beta, N_eff = N (1 - exp(-P/gamma))",
    reference="Kumar et al. 2024, arXiv:2411.04330",
)


def _parscale_mean(p, x):
    capacity = x["N"] * (p["k"] * jnp.log(x["P"]) + 1.0)
    return p["E"] + _term(p["c"], p["alpha"], capacity)


PARSCALE = Law(
    name="parscale",
    inputs=("N", "P"),
    params={
        "E": Param(priors.below_min_output, "irreducible loss, nats/token"),
        "c": Param(priors.coefficient(50.0, 3.0), "coefficient: c = A^alpha in Chen et al.'s (A / N_eff)^alpha",
                   pivot=("N", "alpha")),
        "alpha": Param(priors.exponent(), "exponent of effective parameters"),
        "k": Param(dist.LogNormal(jnp.log(0.4), 1.0), "worth of parallel streams: N_eff = N (k log P + 1)"),
    },
    mean=_parscale_mean,
    saturating_term=("E", "c"),
    description="parallel scaling: P parallel streams act as N (k log P + 1) parameters",
    form="L = E + c (N (k log P + 1))^-alpha, i.e. (A / N_eff)^alpha with A = c^(1/alpha)",
    reference="Chen et al. 2025, arXiv:2505.10475",
)


def saturated_experts(experts, e_start, e_max):
    """Clark et al.'s E': ~E for few experts, saturating at E_max."""
    offset = 1.0 / (1.0 / (e_start - 1.0) - 1.0 / e_max)
    return 1.0 / (1.0 / (experts - 1.0 + offset) + 1.0 / e_max)


def _moe_mean(p, x):
    log_n = jnp.log(x["N"])
    log_e = jnp.log(saturated_experts(x["experts"], 1.0 + p["E_start_minus_1"], p["E_max"]))
    return jnp.exp(p["a"] * log_n + p["b"] * log_e + p["c"] * log_n * log_e + p["d"])


MOE = Law(
    name="moe",
    inputs=("N", "experts"),
    params={
        "a": Param(dist.Normal(-0.1, 0.1), "exponent of dense parameters N"),
        "b": Param(dist.Normal(-0.1, 0.1), "exponent of (saturated) expert count E'"),
        "c": Param(dist.Normal(0.0, 0.05), "interaction of log N and log E'"),
        "d": Param(dist.Normal(3.0, 2.0), "log loss at N = E' = 1"),
        "E_start_minus_1": Param(dist.LogNormal(0.0, 1.0), "E_start - 1: where saturation starts"),
        "E_max": Param(dist.LogNormal(jnp.log(300.0), 1.5), "expert count where gains saturate"),
    },
    mean=_moe_mean,
    description="routed (mixture-of-experts) models: log loss bilinear in log N and log saturated experts",
    form="log L = a log N + b log E' + c log N log E' + d, 1/E' = 1/(E - 1 + (1/(E_start-1) - 1/E_max)^-1) + 1/E_max",
    reference="Clark et al. 2022, arXiv:2202.01169",
)


def _vocabulary_mean(p, x):
    return (
        p["E"]
        + _term(p["A1"], p["alpha1"], x["N_nv"])
        + _term(p["A2"], p["alpha2"], x["N_v"])
        + _term(p["B"], p["beta"], x["D"])
    )


VOCABULARY = Law(
    name="vocabulary",
    inputs=("N_nv", "N_v", "D"),
    params={
        "E": Param(priors.below_min_output, "irreducible loss"),
        "A1": Param(priors.coefficient(), "coefficient of non-vocabulary parameters", pivot=("N_nv", "alpha1")),
        "alpha1": Param(priors.exponent(), "exponent of non-vocabulary parameters N_nv"),
        "A2": Param(priors.coefficient(), "coefficient of vocabulary parameters", pivot=("N_v", "alpha2")),
        "alpha2": Param(priors.exponent(), "exponent of vocabulary parameters N_v"),
        "B": Param(priors.coefficient(), "data-limited loss coefficient", pivot=("D", "beta")),
        "beta": Param(priors.exponent(), "exponent of training data D"),
    },
    mean=_vocabulary_mean,
    saturating_term=("E", "A1", "A2", "B"),
    description="loss with separate non-vocabulary-parameter, vocabulary-parameter and data terms",
    form="L = E + A1 / N_nv^alpha1 + A2 / N_v^alpha2 + B / D^beta",
    reference="Tao et al. 2024, arXiv:2407.13623",
)


def _mean_sparsity(sparsity, prune_start, prune_end):
    """Mean of the cubic pruning schedule over training (the ramp averages 3/4 of the final sparsity)."""
    return sparsity * (0.75 * (prune_end - prune_start) + 1.0 - prune_end)


def _average_params_mean(p, x):
    return p["E"] + _term(p["A"], p["alpha"], x["N_avg"]) + _term(p["B"], p["beta"], x["D"])


AVERAGE_PARAMS = Law(
    name="average_params",
    inputs=("N_avg", "D"),
    params={
        "E": Param(priors.below_min_output, "irreducible loss, nats/token"),
        "A": Param(priors.coefficient(), "parameter-limited loss coefficient", pivot=("N_avg", "alpha")),
        "alpha": Param(priors.exponent(), "exponent of the average parameter count"),
        "B": Param(priors.coefficient(), "data-limited loss coefficient", pivot=("D", "beta")),
        "beta": Param(priors.exponent(), "exponent of tokens D"),
    },
    mean=_average_params_mean,
    saturating_term=("E", "A", "B"),
    derivations=(
        Derivation("N_avg", ("N", "sparsity", "prune_start", "prune_end"),
                   lambda N, s, a, b: N * (1.0 - _mean_sparsity(s, a, b)),
                   "N_avg = N (1 - mean sparsity of a cubic pruning schedule)"),
    ),
    nonnegative_inputs=("sparsity", "prune_start", "prune_end"),  # dense runs: all three are 0
    description="Chinchilla in the parameter count averaged over training: sparse (pruned) and dense runs in one law",
    form="L = E + A / N_avg^alpha + B / D^beta, N_avg = mean parameter count over training",
    reference="Jin et al. 2025, arXiv:2501.12486",
)
