"""Seconds spent compiling, from JAX's own monitoring events, so progress can show them apart.

A progress bar that divides tokens by wall time counts compilation as decoding; the
first batches of a stage (or every new shape bucket) then look slow for the wrong reason.
JAX reports the duration of tracing, lowering and backend compilation of every program it
builds; `seconds()` is their running sum for this process.
"""

from __future__ import annotations

import threading

import jax

_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_lock = threading.Lock()
_total = 0.0
_registered = False


def _listen(event: str, duration: float, **_) -> None:
    global _total
    if event in _EVENTS:
        with _lock:
            _total += duration


def seconds() -> float:
    """Seconds this process has spent tracing, lowering and compiling JAX programs.

    Counts from the first call (which starts listening): read it before and after a piece
    of work and subtract.

    Returns:
      The running total in seconds.
    """
    global _registered
    with _lock:
        if not _registered:
            jax.monitoring.register_event_duration_secs_listener(_listen)
            _registered = True
        return _total
