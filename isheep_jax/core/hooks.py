"""Side work attached to long loops from outside them (the shape of levanter's trainer hooks).

The trainer calls `before_train_step` / `after_train_step` around every step, the generator
calls `after_sampling_batch` after every batch, the loop calls `between_stages` when one
stage's programs and allocations give way to another's, and the evaluation (after each
suite) and the generator cache (after it drops a model) call `after_release` when large
buffers were just let go. The loops know nothing of what runs there: the
command line (and the benchmarks) install, for example, the CPU host-memory hooks
(`backends.cpu.host_memory.HostMemoryHooks`). With nothing installed every call is a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class Hooks:
    """Base class: override the events you need; every method defaults to doing nothing."""

    def before_train_step(self) -> None:
        """Before a train step is dispatched."""

    def after_train_step(self) -> None:
        """After a train step's outputs are on the host (its loss has been read)."""

    def after_sampling_batch(self) -> None:
        """After a sampling batch's tokens are on the host."""

    def between_stages(self) -> None:
        """Between two stages of the loop (sampling, training, evaluation): the next stage
        compiles other programs and allocates differently."""

    def after_release(self) -> None:
        """After large buffers were let go within a stage (an evaluation suite, a model)."""


_installed: list[Hooks] = []


def install(hooks: Hooks) -> None:
    """Adds `hooks` to the process's hooks (run in the order installed).

    Args:
      hooks: the object whose methods run at each event.
    """
    _installed.append(hooks)


def uninstall(hooks: Hooks) -> None:
    """Removes `hooks` (installed earlier).

    Args:
      hooks: the object passed to `install` before.

    Raises:
      ValueError: `hooks` is not installed.
    """
    _installed.remove(hooks)


@contextlib.contextmanager
def installed(hooks: Hooks) -> Iterator[Hooks]:
    """`hooks` installed for the duration of a `with` block.

    Args:
      hooks: the object to install; it is uninstalled on leaving the block, also on an error.

    Yields:
      `hooks` itself.
    """
    install(hooks)
    try:
        yield hooks
    finally:
        uninstall(hooks)


def before_train_step() -> None:
    """Calls `Hooks.before_train_step` of every installed hooks object, in the order installed."""
    for h in _installed:
        h.before_train_step()


def after_train_step() -> None:
    """Calls `Hooks.after_train_step` of every installed hooks object, in the order installed."""
    for h in _installed:
        h.after_train_step()


def after_sampling_batch() -> None:
    """Calls `Hooks.after_sampling_batch` of every installed hooks object, in the order installed."""
    for h in _installed:
        h.after_sampling_batch()


def between_stages() -> None:
    """Calls `Hooks.between_stages` of every installed hooks object, in the order installed."""
    for h in _installed:
        h.between_stages()


def after_release() -> None:
    """Calls `Hooks.after_release` of every installed hooks object, in the order installed."""
    for h in _installed:
        h.after_release()
