"""Observation models: how a measured output scatters around the law's mean.

The default is Normal on log loss with a fitted scale `sigma` (relative error, the way loss curves scatter).
`student_t` is the robust option, the Bayesian counterpart of the Huber-on-log-loss fits the field uses
(Hoffmann et al. 2022, Besiroglu et al. 2024): a few off-trend runs do not drag the exponents. Known per-run
standard errors (`se`, in output units) enter as sd_i = sqrt((se_i / mean_i)^2 + sigma^2) on the log scale.

`ar1` is for training curves, where the points of one run are not independent (a run that is above the law
at step s is still above it at step s + k): Normal on log y with AR(1) residuals within each run,
r_i = rho r_prev(i) + e_i, marginal sd sigma, e_i ~ Normal(0, sigma^2 (1 - rho^2)); `prev` gives each point
the index of the preceding point of its run (-1 for a run's first point; `Runs.prev`, set by
`fit(..., sequence=("run", "step"))`). The log likelihood is the exact joint one, factored point by point
(so pointwise values, and LOO on them, are conditional on the run's earlier points). rho is per logged
point, not per optimiser step.

The observed site is named "y" and is in output units (LogNormal / exp-transformed Student-t), so posterior
predictive draws and ArviZ's observed_data are loss values, not logs.

A law whose output is signed (`Law(output_scale="raw")`: a difference of losses, a normalised score, anything
that may be zero or negative) gets the same families on y itself: Normal(mean, sd) or Student-t(nu, mean, sd)
with sd = sqrt(se^2 + sigma^2) in output units, and sigma ~ HalfNormal(half the observed output range), a
prior that moves with the data's units. The scale is the law's declaration (`as_likelihood` copies it), not a
choice made per fit: it says what kind of quantity the output is. The random-walk discrepancy is defined on the
log scale and is not offered for raw-scale laws.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions.transforms import ExpTransform

from bayescale.discrepancy import Discrepancy, as_discrepancy, observe_with_walk
from bayescale.law import OUTPUT_SCALES, PriorSpec, resolve_prior

FAMILIES = ("normal", "student_t", "ar1")
# Residuals of a scaling-law fit on log loss are a few percent at most; HalfNormal(0.1) puts 90% of its mass
# below 0.16 (16% relative error) and leaves the data to decide within that.
DEFAULT_SIGMA_PRIOR = dist.HalfNormal(0.1)
# Raw-scale noise is in output units, which only the data fix: half the observed range puts 90% of the prior
# below 0.82 x range (a residual sd beyond the whole spread of the outputs is implausible) and is otherwise flat
# enough on the small residuals of a law that fits.
def raw_sigma_prior(stats) -> dist.Distribution:
    return dist.HalfNormal(0.5 * jnp.maximum(stats["y_max"] - stats["y_min"], 1e-12))


# Juarez & Steel (2010): Gamma(2, 0.1) on Student-t degrees of freedom, mean 20, weak towards robustness.
DEFAULT_NU_PRIOR = dist.Gamma(2.0, 0.1)
# Residual correlation between consecutive logged points of a run: uniform over (-1, 1), no preference.
DEFAULT_RHO_PRIOR = dist.Uniform(-1.0, 1.0)


class IntegerStudentT(dist.StudentT):
    """Student-t with a fixed whole number of degrees of freedom, sampled as z / sqrt(chi2_nu / nu) with
    chi2_nu a sum of nu squared normals. Same distribution as `dist.StudentT` (whose sampler draws a
    rejection-sampled gamma, ~2 us per draw on CPU: 2 s for a fit's posterior predictive), ~20x faster."""

    def __init__(self, df: int, loc=0.0, scale=1.0, *, validate_args=None):
        self.whole_df = int(df)
        super().__init__(float(df), loc, scale, validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape
        normals = jax.random.normal(key, (self.whole_df + 1, *shape))
        chi2 = jnp.sum(normals[1:] ** 2, axis=0)
        return self.loc + self.scale * normals[0] * jnp.sqrt(self.whole_df / chi2)


@dataclass(frozen=True)
class Likelihood:
    """`family`: "normal", "student_t" or "ar1". `nu`: Student-t degrees of freedom (None: fitted).
    `discrepancy`: a `bayescale.discrepancy.Discrepancy` (departures from the law shared by runs of similar
    scale, growing beyond the data), or None for independent noise around the law. `scale`: "log" (on log y)
    or "raw" (on y); set from the law's `output_scale` by `as_likelihood` (None: not yet resolved, read as log)."""

    family: str = "normal"
    nu: float | None = 4.0
    sigma_prior: PriorSpec = DEFAULT_SIGMA_PRIOR
    nu_prior: PriorSpec = DEFAULT_NU_PRIOR
    rho_prior: PriorSpec = DEFAULT_RHO_PRIOR
    discrepancy: Discrepancy | None = None
    scale: str | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown likelihood {self.family!r}; choose one of {', '.join(FAMILIES)}")
        if self.scale not in (None, *OUTPUT_SCALES):
            raise ValueError(f"likelihood scale must be one of {OUTPUT_SCALES}, got {self.scale!r}")
        object.__setattr__(self, "discrepancy", as_discrepancy(self.discrepancy))
        if self.discrepancy is not None and self.raw:
            raise ValueError("the random-walk discrepancy is defined on log y; a law with a signed output "
                             "(output_scale='raw') is fitted without it (discrepancy=None)")
        if self.discrepancy is not None and self.family == "ar1":
            raise ValueError("the random-walk discrepancy is integrated out analytically given independent noise "
                             "(normal, or student_t as a scale mixture of normals); the ar1 likelihood's "
                             "correlated residuals are not supported with it. Use discrepancy=None with ar1")

    @property
    def raw(self) -> bool:
        """Whether the noise is on y itself (a signed output) rather than on log y."""
        return self.scale == "raw"

    @property
    def param_names(self) -> tuple[str, ...]:
        """The noise parameters (and the discrepancy's drift), as the posterior names them."""
        if self.family == "ar1":
            names = ("sigma", "rho")
        else:
            names = ("sigma", "nu") if self.family == "student_t" and self.nu is None else ("sigma",)
        return names + (self.discrepancy.param_names if self.discrepancy is not None else ())

    @property
    def noise_names(self) -> tuple[str, ...]:
        """The parameters of the noise of one run around the (discrepancy-shifted) law."""
        return tuple(n for n in self.param_names if n not in ("drift",))

    def with_priors(self, priors: Mapping[str, PriorSpec] | None) -> Likelihood:
        from dataclasses import replace

        priors = priors or {}
        out = self
        if "sigma" in priors:
            out = replace(out, sigma_prior=priors["sigma"])
        if "nu" in priors:
            out = replace(out, nu_prior=priors["nu"])
        if "rho" in priors:
            out = replace(out, rho_prior=priors["rho"])
        if "drift" in priors:
            if out.discrepancy is None:
                raise KeyError("a prior on 'drift' needs a discrepancy term (fit(..., discrepancy='random_walk'))")
            out = replace(out, discrepancy=replace(out.discrepancy, drift_prior=priors["drift"]))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "nu": self.nu, "scale": self.scale or "log",
                "discrepancy": None if self.discrepancy is None else self.discrepancy.to_dict()}

    # ---- inside a NumPyro model ----
    def sample_noise(self, stats) -> dict[str, Any]:
        sigma_prior = raw_sigma_prior if self.raw and self.sigma_prior is DEFAULT_SIGMA_PRIOR else self.sigma_prior
        noise = {"sigma": numpyro.sample("sigma", resolve_prior(sigma_prior, stats))}
        if "nu" in self.param_names:
            noise["nu"] = numpyro.sample("nu", resolve_prior(self.nu_prior, stats))
        if "rho" in self.param_names:
            noise["rho"] = numpyro.sample("rho", resolve_prior(self.rho_prior, stats))
        return noise

    def noise_sd(self, mean, noise: Mapping[str, Any], se=None):
        """The noise sd of each run on the likelihood's scale: sigma, with known errors se added in quadrature
        (on the log scale by the delta method: an output-scale error se is a relative error se / mean)."""
        sigma = noise["sigma"]
        if se is None:
            return sigma
        return jnp.sqrt(se**2 + sigma**2) if self.raw else jnp.sqrt((se / mean) ** 2 + sigma**2)

    def location(self, mean):
        """The law's mean on the likelihood's scale: log mean, or the mean itself for a raw-scale output."""
        return mean if self.raw else _log_mean(mean)

    def distribution(self, mean, noise: Mapping[str, Any], se=None) -> dist.Distribution:
        sigma = self.noise_sd(mean, noise, se)
        loc = self.location(mean)
        if self.family in ("normal", "ar1"):  # ar1's marginal: a new run's point on its own
            return dist.Normal(loc, sigma) if self.raw else dist.LogNormal(loc, sigma)
        if "nu" in noise:
            core = dist.StudentT(noise["nu"], loc, sigma)
        elif float(self.nu).is_integer() and self.nu <= 64:
            core = IntegerStudentT(int(self.nu), loc, sigma)
        else:
            core = dist.StudentT(self.nu, loc, sigma)
        return core if self.raw else dist.TransformedDistribution(core, ExpTransform())

    def observe(self, mean, stats, y=None, se=None, mask=None, prev=None, log_axis=None) -> None:
        """The observed site "y" around `mean`; with a discrepancy, `log_axis` (each run's log scaling axis,
        `bayescale.discrepancy.log_axis`) places the runs on the walk, which shifts the mean on the log scale."""
        noise = self.sample_noise(stats)
        if self.discrepancy is not None:
            if log_axis is None:
                raise ValueError("a likelihood with a discrepancy needs each run's log scaling axis (log_axis=)")
            nu = None if self.family == "normal" else noise.get("nu", self.nu)
            return observe_with_walk(self.discrepancy, stats, _log_mean(mean), self.noise_sd(mean, noise, se),
                                     log_axis, y=y, mask=mask, nu=nu)
        if self.family == "ar1":
            return self._observe_ar1(mean, noise, y, se, mask, prev)
        with numpyro.handlers.mask(mask=True if mask is None else mask):
            numpyro.sample("y", self.distribution(mean, noise, se), obs=y)

    def _observe_ar1(self, mean, noise, y, se, mask, prev) -> None:
        if prev is None:
            raise ValueError("the ar1 likelihood needs each point's predecessor in its run: fit with "
                             "sequence=(run column, step column)")
        if se is not None:
            raise ValueError("the ar1 likelihood does not take known standard errors (se)")
        sigma, rho = noise["sigma"], noise["rho"]
        has_prev = prev >= 0
        before = jnp.where(has_prev, prev, 0)
        scale = jnp.where(has_prev, sigma * jnp.sqrt(1.0 - rho**2), sigma)
        center = self.location(mean)
        to_output = (lambda v: v) if self.raw else jnp.exp
        if y is None:
            # Replicated curves: residuals drawn run by run in order (prev(i) < i, see `sequence_order`).
            shocks = jax.random.normal(numpyro.prng_key(), jnp.shape(center)) * scale

            def step(residuals, i):
                r = jnp.where(has_prev[i], rho * residuals[before[i]], 0.0) + shocks[i]
                return residuals.at[i].set(r), None

            residuals, _ = jax.lax.scan(step, jnp.zeros_like(center), jnp.arange(center.shape[-1]))
            numpyro.deterministic("y", to_output(center + residuals))
            return
        residuals = (y if self.raw else jnp.log(y)) - center
        loc = center + jnp.where(has_prev, rho * residuals[before], 0.0)
        with numpyro.handlers.mask(mask=True if mask is None else mask):
            numpyro.sample("y", dist.Normal(loc, scale) if self.raw else dist.LogNormal(loc, scale), obs=y)

    # ---- outside a model: a new run at new inputs, given posterior draws ----
    def sample_new(self, key, mean, noise: Mapping[str, Any]):
        """Draws of a new run's output. `mean`: (draws, points); noise values: (draws,)."""
        expand = {k: jnp.asarray(v)[:, None] for k, v in noise.items() if k in self.noise_names and k != "rho"}
        return self.distribution(mean, expand).sample(key)


def _log_mean(mean):
    # A law with a subtracted term (lr_annealing's -C S2) can go negative for parameters far from the data;
    # there the density is ~0 (log mean = -690), not NaN, so that optimisers and NUTS step back.
    return jnp.log(jnp.maximum(mean, 1e-300))


def as_likelihood(spec: str | Likelihood | None, discrepancy: Any = "default", grouped: bool = False,
                  law=None) -> Likelihood:
    """A `Likelihood` from a family name (None: "normal"), or as given. `discrepancy`: "default" keeps a given
    Likelihood's own and gives a family name the package default (`bayescale.discrepancy.default_discrepancy`:
    the random walk for the normal likelihood unless `grouped` or `law` cannot take it); anything else ("random_walk", None, a
    `Discrepancy`) replaces it."""
    from dataclasses import replace

    from bayescale.discrepancy import default_discrepancy

    scale = law.output_scale if law is not None and law.numpyro_model is None else None
    if isinstance(spec, Likelihood):
        out = spec
        if scale is not None and out.scale not in (None, scale):
            raise ValueError(f"law {law.name!r} declares its output on the {scale} scale (output_scale={scale!r}); "
                             f"the likelihood's scale={out.scale!r} contradicts it. Leave Likelihood(scale=None)")
    else:
        family = spec or "normal"
        out = Likelihood(family=family, discrepancy=default_discrepancy(family, grouped, law))
    if not (isinstance(discrepancy, str) and discrepancy == "default"):
        out = replace(out, discrepancy=as_discrepancy(discrepancy))
    if scale is not None and out.scale != scale:
        out = replace(out, scale=scale)
    return out
