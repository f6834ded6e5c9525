"""Shared fixtures: simulated data from known laws and the real Chinchilla runs."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import bayescale  # noqa: E402,F401  (before any other JAX use: float64, host devices, compile cache)
import bayescale.discrepancy  # noqa: E402
import bayescale.retries  # noqa: E402
import bayescale.saturating  # noqa: E402

# Two package defaults are switched off for the suite, to keep the default run under 10 minutes on 2 cores:
# - automatic retries: the tests fit many small posteriors at deliberately small settings, where a retry would
#   only double their time (the retries are tested in test_retries.py with explicit `retries=`);
# - the default discrepancy walk: most tests are about something else (intake, batching, evidence, laws) and
#   the walk costs 2-4x per fit. Tests of the walk ask for it (`discrepancy="random_walk"`), and tests of the
#   defaults as users get them use the `package_defaults` fixture below.
bayescale.retries.DEFAULT_POLICY = bayescale.retries.NO_RETRIES
bayescale.discrepancy.DEFAULT_DISCREPANCY = None
bayescale.saturating.ENABLED = False  # each new model compiles faster; tests/test_saturating.py switches it on
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

# Besiroglu et al. 2024's refit of Chinchilla (../shared/data/README.md).
BESIROGLU = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}
BESIROGLU_95 = {
    "E": (1.769, 1.871),
    "A": (285.0, 744.0),
    "B": (1042.0, 5810.0),
    "alpha": (0.317, 0.373),
    "beta": (0.331, 0.415),
}


def chinchilla_loss(p, N, D):
    return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]


def simulate_chinchilla(params=BESIROGLU, num_runs=60, sigma=0.01, seed=0) -> pd.DataFrame:
    """IsoFLOP-like ladder: log-uniform N, tokens-per-parameter between 2 and 200, log-normal noise."""
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(5e7), np.log(5e9), num_runs))
    D = N * np.exp(rng.uniform(np.log(2.0), np.log(200.0), num_runs))
    loss = chinchilla_loss(params, N, D) * np.exp(sigma * rng.standard_normal(num_runs))
    return pd.DataFrame({"N": N, "D": D, "loss": loss})


def isoflop_design(budgets: int = 8, sizes: int = 7):
    """An IsoFLOP ladder: `budgets` compute budgets log-spaced over 1e18-1e22, each with `sizes` model sizes
    from 1/4 to 4 times the compute-optimal N (20 tokens per parameter). Returns C, N, D arrays."""
    rows = [(C, n, C / (6 * n)) for C in np.geomspace(1e18, 1e22, budgets)
            for n in np.sqrt(C / 120) * np.geomspace(0.25, 4.0, sizes)]
    return np.array(rows).T


def kaplan_law_ladders(count: int, seed: int = 0) -> pd.DataFrame:
    """IsoFLOP ladders drawn from Kaplan et al. 2020's law (Nc 8.8e13, Dc 5.4e13, aN 0.076, aD 0.095) with 1%
    noise, column "ladder" naming each: data a Chinchilla-law fit misdescribes beyond the fitted range, as
    real laws are."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        _, N, D = isoflop_design()
        loss = ((8.8e13 / N) ** (0.076 / 0.095) + 5.4e13 / D) ** 0.095
        frames.append(pd.DataFrame({"N": N, "D": D, "loss": loss * np.exp(0.01 * rng.standard_normal(len(N))),
                                    "ladder": f"ladder{i}"}))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="session")
def chinchilla_table() -> pd.DataFrame:
    return bayescale.load_example("chinchilla")


@pytest.fixture(scope="session")
def besiroglu_table(chinchilla_table) -> pd.DataFrame:
    """Besiroglu et al.'s 240 points: the 245 runs less the five with the highest loss."""
    return chinchilla_table.sort_values("loss").iloc[:-5]


@pytest.fixture
def package_defaults(monkeypatch):
    """The package's own defaults (one automatic retry, the discrepancy walk with the normal likelihood, the
    level-and-slope coordinates), which conftest switches off for the rest of the suite."""
    monkeypatch.setattr(bayescale.retries, "DEFAULT_POLICY", bayescale.retries.RetryPolicy())
    monkeypatch.setattr(bayescale.discrepancy, "DEFAULT_DISCREPANCY", "random_walk")
    monkeypatch.setattr(bayescale.saturating, "ENABLED", True)
