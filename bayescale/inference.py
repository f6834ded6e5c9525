"""The engine's one sampler: NUTS with a dense mass matrix, started at the MAP, several chains, reproducible
from a seed, as pure functions over explicit state (`find_map`, `start_chains`, `transitions`;
`sample_posterior` runs them) that jit, vmap over data sets and shard over devices.

The dense mass matrix matters: log-coefficients and exponents of a power law are strongly correlated (diagonal adaptation needs
~230 leapfrog steps per iteration on Chinchilla, dense ~17; ../shared/STACK.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec
from numpyro.infer.hmc import hmc

from bayescale import progress
from bayescale.map_estimate import find_map
from bayescale.model import Program, program_for  # noqa: F401  (program_for: part of the core's interface)


@dataclass(frozen=True)
class SamplerSettings:
    num_warmup: int = 1000
    num_samples: int = 1000
    num_chains: int = 4
    # 0.95, not numpyro's 0.8: when an exponent is small, E and its coefficient trade off along a narrow
    # tail (A / N^alpha ~ constant), and smaller steps there removed the rare divergences on simulated
    # Chinchilla data (9 of 9 fits clean at 0.95 vs 1 of 9 with a divergence at 0.9).
    target_accept_prob: float = 0.95
    max_tree_depth: int = 10
    dense_mass: bool = True
    chain_method: str = "auto"   # "auto" (= "sequential"), "parallel" or "vectorized"; see `chain_devices`
    init_jitter: float = 0.1     # spread of chain starts around the MAP, in unconstrained units

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# A downstream chain's standardised loss of each run (or of each task and run): the run's latent loss where
# none was measured, unused elsewhere (`bayescale.downstream.chain_model`). One value per run, so diagonal mass.
LATENT_LOSS_SITE = "_loss_z"


def mass_structure(settings: SamplerSettings, latent_sites=None):
    """`dense_mass` for NUTS: True (one dense block) unless the model has per-run latent sites (Student-t
    noise with the discrepancy walk: one precision weight per run; a downstream chain's standardised loss of
    each run, or of each task and run). Those get a diagonal mass, and the few global parameters keep their
    dense block: a dense matrix over hundreds of weights cannot be estimated from a warm-up of hundreds of
    draws, and NUTS then needs its longest trees. Measured on a chain with a loss per task (4 tasks x 15
    runs: 60 latent losses, 1 x 300 + 200): 100 leapfrog steps per draw with them diagonal against ~1,000
    in one dense block (benchmarks/results/grouped_geometry.md)."""
    from bayescale.discrepancy import PER_RUN_SITES

    diagonal = set(PER_RUN_SITES) | {LATENT_LOSS_SITE}
    if not settings.dense_mass or latent_sites is None or not set(latent_sites) & diagonal:
        return settings.dense_mass
    return [tuple(sorted(s for s in latent_sites if s not in diagonal))]


def nuts_options(settings: SamplerSettings, latent_sites=None) -> dict[str, Any]:
    """The options of numpyro's NUTS init kernel for `settings`. `latent_sites`: the model's sampled sites
    (see `mass_structure`)."""
    return {
        "dense_mass": mass_structure(settings, latent_sites),
        "target_accept_prob": settings.target_accept_prob,
        "max_tree_depth": settings.max_tree_depth,
    }


CHAIN_METHODS = ("auto", "sequential", "parallel", "vectorized")


def chain_method(settings: SamplerSettings) -> str:
    """How the chains of one data set run: "sequential" (`lax.map`, one after the other; what "auto" means),
    "parallel" (split over the local devices, sequential on each; single fits only) or "vectorized"."""
    if settings.chain_method not in CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {CHAIN_METHODS}, got {settings.chain_method!r}")
    return "sequential" if settings.chain_method == "auto" else settings.chain_method


def chain_starts(key: jax.Array, center: Mapping[str, Any], num_chains: int, jitter: float) -> dict[str, Any]:
    """Dispersed starts around a point: chains that all start at one mode cannot reveal another to R-hat."""
    keys = jax.random.split(key, len(center))
    return {
        name: jnp.asarray(value) + jitter * jax.random.normal(k, (num_chains, *jnp.shape(value)))
        for k, (name, value) in zip(keys, sorted(center.items()))
    }


# ---- the functional sampling core ----
#
# Every posterior of the engine (single and grouped fits, downstream chains, batches, backtest refits, the
# CLI) is sampled by the pure functions below, in the style of BlackJAX: explicit state in, explicit state
# out, no hidden sampler object. `sample_posterior` strings two compiled programs together:
#
#   start       : MAP from prior starts (L-BFGS), chains dispersed around it -> initial NUTS states
#   transitions : `DRAW_CHUNK` NUTS transitions from those states (adapting while still in warm-up)
#
# The transitions program is called as often as needed, for the warm-up and then for the draws, so the
# number of draws never enters a compiled program: fits that differ only in `num_samples` share both
# programs (through the persistent compilation cache, also across processes). A batch vmaps the same
# functions over data sets; a single fit calls them unvmapped (vmapping over an axis of one batches every
# loop of NUTS and of the L-BFGS line search: 2-3x the tracing and compile time, measured). The chains of a
# single fit run one after the other (`lax.map`), or split over the local devices (`shard_map`, "parallel");
# chains in lockstep (`vmap`, "vectorized") took 1.5 s where sequential ones took 0.9 s on one core
# (Chinchilla, 4 x 1000 + 1000), since a vmapped NUTS step costs the longest trajectory of all.

DRAW_CHUNK = 50  # NUTS transitions per call of the draw program


def chain_devices(settings: SamplerSettings, batched: bool) -> int:
    """Devices the chains of one data set are spread over: under "parallel", as many local devices as divide
    the chain count, for a single fit (a batch spreads its data sets instead); 1 otherwise.

    Why "auto" is sequential (Chinchilla, 240 runs, 4 x 1000 + 1000, 2 CPU cores): split over 2 devices the
    warm fit took 0.78 s against 1.04 s, but compiling the partitioned program took ~4 s longer (17 s against
    13 s), and most fits are first fits of their shape."""
    if batched or chain_method(settings) != "parallel":
        return 1
    available = jax.local_device_count()
    return max(d for d in range(1, settings.num_chains + 1) if settings.num_chains % d == 0 and d <= available)


def over_leading_axis(fn, method: str, devices: int = 1, axis_name: str = "items"):
    """`fn` over the leading axis of its arguments (chains, or data sets): in lockstep (`method`
    "vectorized": vmap; an input sharding spreads the lanes over devices), or one item after another on each
    of `devices` devices (the axis split over them with `shard_map`, every item independent)."""
    if method == "vectorized":
        return jax.vmap(fn)
    one_after_another = lambda *xs: jax.lax.map(lambda x: fn(*x), xs)  # noqa: E731
    if devices == 1:
        return one_after_another
    mesh = Mesh(np.array(jax.local_devices()[:devices]), (axis_name,))
    return jax.shard_map(one_after_another, mesh=mesh, in_specs=PartitionSpec(axis_name),
                         out_specs=PartitionSpec(axis_name), check_vma=False)


def start_chains(program: Program, settings: SamplerSettings, key, mode, args, kwargs):
    """Initial NUTS states of `num_chains` chains started around `mode` (numpyro's init kernel: step size and
    mass matrix not yet adapted; `transitions` adapts them during the first `num_warmup` transitions)."""
    key_run, key_init = jax.random.split(key)
    inits = chain_starts(key_init, mode, settings.num_chains, settings.init_jitter)
    chain_keys = jax.random.split(key_run, settings.num_chains) if settings.num_chains > 1 else key_run[None]
    options = nuts_options(settings, list(program.latent))

    def one(chain_key, z0):
        init_kernel, _ = hmc(potential_fn_gen=program.potential_fn_gen, algo="NUTS")
        return init_kernel(z0, settings.num_warmup, **options, model_args=args, model_kwargs=kwargs, rng_key=chain_key)

    return jax.vmap(one)(chain_keys, inits)


def transitions(program: Program, settings: SamplerSettings, states, args, kwargs, length: int, devices: int = 1):
    """`length` NUTS transitions of every chain from `states`; while a chain's transition count is below
    `num_warmup` it adapts its step size and mass matrix (numpyro's windowed adaptation), after that it
    samples. Returns (states, draws in the user's units {site: (chains, length, ...)}, sample statistics
    under ArviZ's names)."""
    options = nuts_options(settings, list(program.latent))

    def one(state):
        init_kernel, sample_kernel = hmc(potential_fn_gen=program.potential_fn_gen, algo="NUTS")
        # numpyro's sample kernel reads its configuration (adaptation schedule, tree depth, integrator) from
        # a closure that init_kernel fills; this call only fills it, and XLA drops its unused result.
        init_kernel(state.z, settings.num_warmup, **options, model_args=args, model_kwargs=kwargs, rng_key=state.rng_key)

        def transition(s, _):
            s = sample_kernel(s, model_args=args, model_kwargs=kwargs)
            return s, (s.z, s.diverging, s.energy, s.potential_energy, s.num_steps, s.accept_prob, s.adapt_state.step_size)

        return jax.lax.scan(transition, state, None, length=length)

    states, (z, diverging, energy, potential, num_steps, accept_prob, step_size) = over_leading_axis(one, chain_method(settings), devices, "chain")(states)
    samples = jax.vmap(jax.vmap(program.postprocess_fn_gen(*args, **kwargs)))(z)
    stats = {"diverging": diverging, "energy": energy, "lp": -potential, "n_steps": num_steps,
             "acceptance_rate": accept_prob, "step_size": step_size}
    return states, samples, stats


def scalar_sites(values: Mapping[str, Any]) -> dict[str, float]:
    """The scalar, public sites of a point (e.g. the MAP) as floats."""
    return {k: float(np.asarray(v)) for k, v in values.items() if not k.startswith("_") and np.ndim(v) == 0}


def _compiled_settings(settings: SamplerSettings) -> SamplerSettings:
    # The number of draws is a loop count in Python, not part of any compiled program (the warm-up length
    # is: numpyro's adaptation schedule is built from it).
    return dataclasses.replace(settings, num_samples=0)


BATCH_METHODS = ("auto", "sequential", "vectorized")


def batch_method(method: str = "auto") -> str:
    """How a batch runs its data sets on each device: one after another ("sequential", `lax.map`) or in
    lockstep ("vectorized", `vmap`). "auto": vectorized on GPU and TPU, where lockstep lanes are what the
    hardware runs well, sequential on CPU, where a vmapped NUTS step waits for the longest trajectory of the
    whole batch: 200 Chinchilla data sets (50 runs, 4 x 500 + 500) took 0.60 s each vmapped on 2 cores,
    against 0.17 s each for a loop of single fits (benchmarks/results/core_speed.md)."""
    if method not in BATCH_METHODS:
        raise ValueError(f"batch method must be one of {BATCH_METHODS}, got {method!r}")
    if method != "auto":
        return method
    return "vectorized" if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else "sequential"


def _over_data_sets(fn, over_data: tuple[str, int]):
    """`fn` over a leading data-set axis; `over_data` = (method, devices), the axis named "data" as in
    `bayescale.batch.data_sharding`, whose sharding of the inputs it matches."""
    method, devices = over_data
    return over_leading_axis(fn, method, devices, "data")


@partial(jax.jit, static_argnames=("program", "settings", "map_starts", "map_iter", "over_data"))
def _start(program, settings, map_starts, map_iter, keys, args, kwargs, over_data):
    def one(key, args, kwargs):
        key_map, key_nuts, _ = jax.random.split(key, 3)
        mode, values = find_map(program, key_map, args, kwargs, map_starts, map_iter)
        states = start_chains(program, settings, key_nuts, mode, args, kwargs)
        return states, {"map": program.postprocess_fn_gen(*args, **kwargs)(mode), "map_u": mode,
                        "map_values": values}

    return one(keys, args, kwargs) if over_data is None else _over_data_sets(one, over_data)(keys, args, kwargs)


@partial(jax.jit, static_argnames=("program", "settings", "length", "over_data", "devices"))
def _transitions(program, settings, length, states, args, kwargs, over_data, devices):
    one = lambda s, a, k: transitions(program, settings, s, a, k, length, devices)  # noqa: E731
    return one(states, args, kwargs) if over_data is None else _over_data_sets(one, over_data)(states, args, kwargs)


def sample_posterior(program: Program, settings: SamplerSettings, key, args, kwargs, *, map_starts: int = 32,
                     map_iter: int = 500, batched: bool = False, batch: str = "auto",
                     data_devices: int = 1) -> dict[str, Any]:
    """MAP, warm-up and `settings.num_samples` draws of every chain: the one sampler of the engine.

    `key` is split into (MAP, NUTS, predictive) keys, the third left to the caller. `batched`: `key`, `args`
    and `kwargs` carry a leading data-set axis and every output gains it; the data sets run as `batch` says
    (`batch_method`), split over `data_devices` devices (the inputs sharded over them, as
    `bayescale.batch` does). Returns host arrays: "samples" {site: ([data sets,] chains, draws, ...)},
    "stats" likewise (ArviZ sample_stats names), "map" (the MAP in the user's units), "map_u"
    (unconstrained), "map_values" (final potential energy of every MAP start)."""
    over_data = (batch_method(batch), int(data_devices)) if batched else None
    compiled = _compiled_settings(settings)
    devices = chain_devices(settings, batched)
    what = f"{len(key)} data sets" if batched else "1 data set"
    progress.report(f"{what}: MAP from {map_starts} starts (compiles first when new)")
    states, start = _start(program, compiled, map_starts, map_iter, key, args, kwargs, over_data)

    def run(states):
        return _transitions(program, compiled, DRAW_CHUNK, states, args, kwargs, over_data, devices)

    # Warm-up and draws are the same chunked program, so neither count enters a compiled program. Warm-up
    # rounds up to whole chunks: the few transitions past `num_warmup` are valid draws, discarded.
    warmup_chunks = -(-settings.num_warmup // DRAW_CHUNK)
    for i in range(warmup_chunks):
        states, _, _ = run(states)
        if i + 1 == warmup_chunks:
            progress.report(f"{what}: {settings.num_chains} chains x {settings.num_warmup} warm-up done")
    pieces = []
    chunks = -(-settings.num_samples // DRAW_CHUNK)
    for i in range(chunks):
        states, samples, stats = run(states)
        pieces.append(jax.device_get((samples, stats)))
        if progress.enabled() and (i + 1 == chunks or (i + 1) % max(1, chunks // 4) == 0):
            progress.report(f"{what}: {min((i + 1) * DRAW_CHUNK, settings.num_samples)}/{settings.num_samples} draws")
    axis = 2 if batched else 1  # the draws axis, after [data sets,] chains
    if pieces:
        samples, stats = jax.tree.map(
            lambda *parts: np.concatenate(parts, axis=axis).take(np.arange(settings.num_samples), axis=axis), *pieces)
    else:
        samples, stats = {}, {}
    return {"samples": dict(samples), "stats": dict(stats), **jax.device_get(start)}
