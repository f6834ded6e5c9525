"""Progress lines for long computations: one line per phase of the sampler, on a terminal only.

The sampler (`bayescale.inference.sample_posterior`) reports its phases (compiling and warm-up, then draws
in chunks) through `report`; nothing is printed unless a caller switched reporting on with `reporting`.
The CLI does so when standard error is a terminal and `--json` was not given, so scripts and pipes stay
quiet; in Python, `with bayescale.progress.reporting(): bs.fit(...)` prints the same lines.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TextIO

_stream: TextIO | None = None
_started: float = 0.0


@contextlib.contextmanager
def reporting(stream: TextIO | None = None) -> Iterator[None]:
    """Print progress lines to `stream` (standard error by default) inside the block."""
    global _stream, _started
    previous = _stream, _started
    _stream, _started = stream or sys.stderr, time.perf_counter()
    try:
        yield
    finally:
        _stream, _started = previous


def report(message: str) -> None:
    """One progress line, prefixed with the seconds since reporting began; nothing when it is off."""
    if _stream is None:
        return
    print(f"[{time.perf_counter() - _started:6.1f} s] {message}", file=_stream, flush=True)


def enabled() -> bool:
    return _stream is not None
