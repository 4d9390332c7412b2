"""Imports whose native libraries print start-up chatter to file descriptor 2, filtered.

TensorFlow (under SeqIO) writes its C++ start-up lines straight to fd 2 through absl,
before any Python logging or `TF_CPP_MIN_LOG_LEVEL` applies: "oneDNN custom operations
are on", "Could not find cuda drivers", cuDNN/cuBLAS factory registrations. On a CPU host
those are the first lines a user sees, and they say nothing about the run. The import runs
with fd 2 pointed at a temporary file; afterwards every line that is not one of the known
messages is written back to stderr, so real warnings and errors still show.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from collections.abc import Sequence
from types import ModuleType

# Substrings of the start-up lines dropped; anything else printed during the import is kept.
NOISE = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
    "cudart_stub.cc",
    "Could not find cuda drivers",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
    "TF-TRT Warning",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions",
)


def filter_lines(text: str, noise: Sequence[str] = NOISE) -> str:
    """`text` without the lines that contain one of `noise`.

    Args:
      text: what was printed.
      noise: substrings that mark a line as start-up chatter.

    Returns:
      The remaining lines, line ends kept.
    """
    return "".join(line for line in text.splitlines(keepends=True) if not any(n in line for n in noise))


def quiet_import(name: str, noise: Sequence[str] = NOISE) -> ModuleType:
    """Imports module `name` with its native start-up chatter on fd 2 filtered out.

    A module already imported is returned as it is (its libraries printed long ago).

    Args:
      name: the module, e.g. "tensorflow".
      noise: substrings of the lines to drop.

    Returns:
      The module.

    Raises:
      Whatever the import raises (the captured output is written back first).
    """
    if name in sys.modules:
        return sys.modules[name]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            return importlib.import_module(name)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            sys.stderr.write(filter_lines(capture.read().decode("utf-8", "replace"), noise))
            sys.stderr.flush()
