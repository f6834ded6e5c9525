"""The one sampling core (`bayescale.inference`): its programs are reused, its chain methods sample the same
posterior, it reports progress when asked, and importing the package or asking the CLI for help does not
load JAX."""

import io
import subprocess
import sys
import warnings

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import bayescale as bs
from bayescale import inference, progress
from bayescale.model import program_for


def linear_model(x, y=None):
    """A conjugate model whose posterior is known in closed form: slope ~ N(0, 1), y ~ N(slope x, 0.5)."""
    slope = numpyro.sample("slope", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(slope * x, 0.5), obs=y)


X = np.linspace(-1.0, 1.0, 12)
Y = 0.7 * X + 0.5 * np.random.default_rng(0).standard_normal(12)
# Posterior of the slope: precision 1 + sum(x^2) / 0.25, mean sum(x y) / 0.25 / precision.
PRECISION = 1.0 + np.sum(X**2) / 0.25
MEAN, SD = np.sum(X * Y) / 0.25 / PRECISION, PRECISION**-0.5


def sample(method: str = "auto", draws: int = 500, seed: int = 0):
    args, kwargs = (jnp.asarray(X),), {"y": jnp.asarray(Y)}
    settings = bs.SamplerSettings(num_warmup=200, num_samples=draws, num_chains=4, chain_method=method)
    return inference.sample_posterior(program_for(linear_model, args, kwargs), settings, __import__("jax").random.PRNGKey(seed),
                                      args, kwargs)


@pytest.mark.parametrize("method", ["sequential", "parallel", "vectorized"])
def test_every_chain_method_samples_the_known_posterior(method):
    draws = sample(method)
    slope = draws["samples"]["slope"]
    assert slope.shape == (4, 500)
    assert draws["stats"]["diverging"].shape == (4, 500) and not draws["stats"]["diverging"].any()
    # Within 5 Monte Carlo standard errors (ESS >= 500 of 2,000 draws here) of the exact posterior.
    assert abs(slope.mean() - MEAN) < 5 * SD / np.sqrt(500), (slope.mean(), MEAN)
    assert abs(slope.std() - SD) < 0.1 * SD
    assert np.isclose(draws["map"]["slope"], MEAN, rtol=1e-4)


def test_the_number_of_draws_is_not_compiled_in():
    sample(draws=100)
    compiled = inference._transitions._cache_size(), inference._start._cache_size()
    other = sample(draws=130, seed=1)  # not a multiple of the chunk: the last chunk is cut
    assert other["samples"]["slope"].shape == (4, 130) and other["stats"]["lp"].shape == (4, 130)
    assert (inference._transitions._cache_size(), inference._start._cache_size()) == compiled


def test_same_seed_same_draws_and_chunking_does_not_change_them():
    a, b = sample(draws=120), sample(draws=120)
    np.testing.assert_array_equal(a["samples"]["slope"], b["samples"]["slope"])
    # The first 100 of 120 draws are the draws of a 100-draw run: the chain's state carries across chunks.
    np.testing.assert_array_equal(sample(draws=100)["samples"]["slope"], a["samples"]["slope"][:, :100])


def test_unknown_chain_method_is_refused():
    with pytest.raises(ValueError, match="chain_method must be one of"):
        sample("threads")


def test_progress_lines_only_when_reporting():
    stream = io.StringIO()
    with progress.reporting(stream):
        sample(draws=100)
    lines = stream.getvalue().splitlines()
    assert any("MAP from 32 starts" in line for line in lines)
    assert any("200 warm-up done" in line for line in lines)
    assert lines[-1].endswith("100/100 draws")
    quiet = io.StringIO()
    sys.stderr, saved = quiet, sys.stderr
    try:
        sample(draws=100)
    finally:
        sys.stderr = saved
    assert quiet.getvalue() == ""


def test_import_and_cli_help_do_not_load_jax():
    code = ("import sys, bayescale; from bayescale.cli import main; "
            "print('jax' in sys.modules, 'arviz' in sys.modules, 'pandas' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False", "False"]
    helped = subprocess.run([sys.executable, "-c", "import sys; from bayescale.cli import main\n"
                             "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
                             "print('jax' in sys.modules)"], capture_output=True, text=True, check=True)
    assert helped.stdout.strip().endswith("False") and "usage: bayescale" in helped.stdout


def test_package_names_resolve_lazily_and_keep_functions_over_submodules():
    import bayescale.backtest  # noqa: F401  binds the submodule on the package...
    import bayescale.fit  # noqa: F401

    assert callable(bs.fit) and callable(bs.backtest)  # ...but the exported functions stay
    assert bs.SamplerSettings is inference.SamplerSettings
    assert set(bs.__all__) <= set(dir(bs))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        bs.not_a_name  # noqa: B018


def test_a_map_that_is_nowhere_finite_is_an_error_naming_the_law_s_starts():
    law = bs.Law(name="never_finite", inputs=("x",), numpyro_model=_never_finite)
    table = {"x": [1.0, 2.0, 3.0], "loss": [1.0, 1.1, 1.2]}
    with warnings.catch_warnings(), pytest.raises(FloatingPointError, match="not finite at any of the prior's starts"):
        warnings.simplefilter("ignore")
        bs.fit(__import__("pandas").DataFrame(table), law, num_warmup=50, num_samples=50, num_chains=1, seed=0)


def _never_finite(x, stats, y=None, se=None, mask=None):
    scale = numpyro.sample("scale", dist.HalfNormal(1.0))
    numpyro.sample("y", dist.Normal(jnp.log(-scale) * x["x"], 1.0), obs=y)


# The vectorized (GPU/TPU default) variant: slow tier: the default run's 10-minute budget (2026-12-02 clean-clone runs: 15:09 for 208 tests, 11:57 for 202)
@pytest.mark.parametrize("method", ["sequential", pytest.param("vectorized", marks=pytest.mark.slow)])
def test_a_batch_gives_each_data_set_its_own_posterior_with_either_method(method):
    """Three data sets with slopes 0.7, -0.3 and 1.5, split over the local devices: each member's draws
    match its own exact posterior, whichever way the data sets run on a device."""
    import jax

    slopes = np.array([0.7, -0.3, 1.5])
    noise = 0.5 * np.random.default_rng(3).standard_normal((3, 12))
    ys = slopes[:, None] * X[None, :] + noise
    devices = 2 if jax.local_device_count() >= 2 else 1
    count = -(-3 // devices) * devices  # padded to a multiple of the devices, as bayescale.batch does
    ys_padded = np.concatenate([ys, np.repeat(ys[-1:], count - 3, axis=0)])
    args, kwargs = (jnp.tile(jnp.asarray(X), (count, 1)),), {"y": jnp.asarray(ys_padded)}
    if devices > 1:
        from bayescale.batch import data_sharding

        args, kwargs = jax.device_put((args, kwargs), data_sharding(count))
    settings = bs.SamplerSettings(num_warmup=200, num_samples=500, num_chains=2)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(count))
    program = program_for(linear_model, (jnp.asarray(X),), {"y": jnp.asarray(Y)})
    draws = inference.sample_posterior(program, settings, keys, args, kwargs, batched=True, batch=method,
                                       data_devices=devices)
    assert draws["samples"]["slope"].shape == (count, 2, 500)
    for i in range(3):
        mean = np.sum(X * ys[i]) / 0.25 / PRECISION
        slope = draws["samples"]["slope"][i]
        assert abs(slope.mean() - mean) < 5 * SD / np.sqrt(300), (i, slope.mean(), mean)
        assert np.isclose(draws["map"]["slope"][i], mean, rtol=1e-4)


def test_batch_method_is_checked_and_auto_follows_the_backend():
    import jax

    assert inference.batch_method("auto") == ("sequential" if jax.default_backend() == "cpu" else "vectorized")
    with pytest.raises(ValueError, match="batch method must be one of"):
        inference.batch_method("threads")


def test_per_run_latent_sites_get_a_diagonal_mass_and_the_rest_one_dense_block():
    """A chain's latent losses (one per run, or per task and run) and the walk's per-run noise weights are
    left out of the dense block: estimated from a few hundred warm-up draws, a dense block over them made the
    chain with a loss per task run ~1,000 leapfrog steps per draw (100 with them diagonal)."""
    from bayescale.discrepancy import NOISE_WEIGHT_SITE

    settings = inference.SamplerSettings()
    assert inference.mass_structure(settings, ["E", "sigma"]) is True
    sites = ["E", "_loss_z", "sigma", NOISE_WEIGHT_SITE, "k"]
    assert inference.mass_structure(settings, sites) == [("E", "k", "sigma")]
    assert inference.mass_structure(inference.SamplerSettings(dense_mass=False), sites) is False
    from bayescale import downstream

    assert downstream.LATENT_LOSS_SITE == inference.LATENT_LOSS_SITE == "_loss_z"
