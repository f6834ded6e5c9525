"""JAX settings the engine relies on, applied once when `bayescale` is imported.

- float64 (`jax_enable_x64`): scaling-law exponents and the irreducible loss are poorly conditioned in
  float32 (L-BFGS produced NaNs there; see ../shared/STACK.md).
- Several host "devices" on CPU, so NUTS chains run in parallel threads (`chain_method="parallel"`). This
  only works if it happens before JAX initialises its backends; `bayescale` sets it on import unless the
  user already chose (XLA_FLAGS) or opted out (BAYESCALE_HOST_DEVICES=0).
- A persistent compilation cache: numpyro recompiles the whole sampling loop on every `MCMC.run`, and
  compilation is most of the wall time of a fit. With the cache, a second fit of the same shapes (in this
  process or a later one) loads the compiled program instead. Directory: BAYESCALE_CACHE_DIR, else
  ~/.cache/bayescale/jax; BAYESCALE_CACHE_DIR=off disables it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

DEFAULT_HOST_DEVICES = 4


def _backends_initialised() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(getattr(xla_bridge, "_backends", {}))
    except Exception:  # private API moved: assume the worst, never crash on import
        return False


def configure_host_devices(count: int | None = None) -> int:
    """Ask XLA for `count` CPU devices so chains can run in parallel; returns the count in force."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return int(flags.split("xla_force_host_platform_device_count=")[1].split()[0])
    if count is None:
        count = int(os.environ.get("BAYESCALE_HOST_DEVICES", max(DEFAULT_HOST_DEVICES, os.cpu_count() or 1)))
    if count <= 1:
        return 1
    if _backends_initialised():
        warnings.warn(
            "JAX was initialised before bayescale was imported, so NUTS chains cannot run in parallel on "
            "CPU; import bayescale first (or set XLA_FLAGS=--xla_force_host_platform_device_count=4).",
            stacklevel=3,
        )
        return 1
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
    return count


def cache_dir() -> Path | None:
    setting = os.environ.get("BAYESCALE_CACHE_DIR")
    if setting and setting.lower() in {"off", "0", "none", "false"}:
        return None
    if setting:
        return Path(setting)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bayescale" / "jax"


def enable_compilation_cache(path: Path | None = None) -> Path | None:
    import jax

    path = path or cache_dir()
    if path is None:
        return None
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def configure() -> None:
    configure_host_devices()
    import jax

    jax.config.update("jax_enable_x64", True)
    enable_compilation_cache()
