"""JAX settings the engine relies on, applied when `bayescale` is imported, without importing JAX.

- float64 (`jax_enable_x64`): scaling-law exponents and the irreducible loss are poorly conditioned in
  float32 (L-BFGS produced NaNs there; see ../shared/STACK.md).
- One CPU "device" per core (`jax_num_cpu_devices`), over which batches shard their data sets
  (`bayescale.batch`). BAYESCALE_HOST_DEVICES sets another count (1: a single device).
- A persistent compilation cache: compilation is most of the wall time of a first fit, and with the cache a
  later process with the same shapes loads the compiled programs instead. Directory: BAYESCALE_CACHE_DIR,
  else ~/.cache/bayescale/jax; BAYESCALE_CACHE_DIR=off disables it.

Each setting is one of JAX's public configuration options. When JAX is not imported yet (the usual case,
and what keeps `import bayescale` and the CLI's `--help` fast), they are handed to it through the
environment variables it reads at import (JAX_ENABLE_X64, JAX_NUM_CPU_DEVICES, ...); when it is, through
`jax.config.update`, which refuses the device count once JAX has run something: bayescale then warns and
keeps the devices JAX has.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path


def host_device_count() -> int:
    """CPU devices to ask JAX for: BAYESCALE_HOST_DEVICES, else one per core."""
    setting = os.environ.get("BAYESCALE_HOST_DEVICES")
    if setting is None:
        return max(1, os.cpu_count() or 1)
    try:
        count = int(setting)
    except ValueError:
        raise ValueError(f"BAYESCALE_HOST_DEVICES must be a whole number of CPU devices, got {setting!r}") from None
    return max(1, count)


def cache_dir() -> Path | None:
    setting = os.environ.get("BAYESCALE_CACHE_DIR")
    if setting and setting.lower() in {"off", "0", "none", "false"}:
        return None
    if setting:
        return Path(setting)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bayescale" / "jax"


def _options() -> dict[str, object]:
    options: dict[str, object] = {"jax_enable_x64": True}
    # The user's own XLA flag for host devices wins (JAX reads it when jax_num_cpu_devices is unset).
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        options["jax_num_cpu_devices"] = host_device_count()
    path = cache_dir()
    if path is not None:
        options.update({
            "jax_compilation_cache_dir": str(path),
            "jax_persistent_cache_min_compile_time_secs": 0.0,
            "jax_persistent_cache_min_entry_size_bytes": 0,
        })
    return options


def configure() -> None:
    """Apply the engine's JAX options (see the module docstring)."""
    path = cache_dir()
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
    options = _options()
    if "jax" not in sys.modules:
        for name, value in options.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            if name == "jax_enable_x64":
                os.environ[name.upper()] = text  # not optional: the engine is wrong in float32
            else:
                os.environ.setdefault(name.upper(), text)  # the user's own JAX setting wins
        return
    import jax

    for name, value in options.items():
        try:
            jax.config.update(name, value)
        except RuntimeError:  # the device count, after JAX has initialised its backends
            warnings.warn(
                f"JAX was initialised before bayescale was imported, so it keeps its {jax.local_device_count()} "
                f"CPU device(s) (bayescale asks for {value}); import bayescale first, or set JAX_NUM_CPU_DEVICES.",
                stacklevel=3,
            )


def repair_lazy_numpyro_imports() -> None:
    """Bind every imported numpyro submodule to its parent package, where a lazy import lost it.

    ArviZ's NumPyro converter (arviz_base.io_numpyro) registers numpyro as a lazy module (lazy_loader) when
    ArviZ is imported. A numpyro submodule imported before that lazy module has loaded is then missing from
    its parent's namespace: after `import arviz; import numpyro.distributions`, numpyro's own
    `numpyro.factor` fails with "module 'numpyro.distributions' has no attribute 'distribution'", so every
    fit of a user who imported ArviZ first crashed inside NumPyro. Called when bayescale's modules that use
    numpyro are imported (`bayescale.law`); a no-op when nothing is missing."""
    import numpyro

    numpyro.__version__  # noqa: B018  (an attribute access loads a lazy module)
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("numpyro."):
            continue
        parent, _, child = name.rpartition(".")
        owner = sys.modules.get(parent)
        if owner is not None and not hasattr(owner, child):
            setattr(owner, child, module)
