"""Where isheep_jax keeps what it builds once per machine: imported models, kernels, XLA programs.

A leaf: it reads the environment at call time (tests and users may set it late) and imports
nothing of the package, so any layer can ask for a cache directory.
"""

from __future__ import annotations

import os

CACHE_ENV = "ISHEEP_CACHE"  # the root; default ~/.cache/isheep_jax
XLA_CACHE_ENV = "ISHEEP_XLA_CACHE"  # the XLA compilation cache; '' turns it off


def cache_dir(*parts: str) -> str:
    """A directory under the cache root (`$ISHEEP_CACHE`, default `~/.cache/isheep_jax`).

    Args:
      *parts: path components under the root, e.g. `("kernels",)`.

    Returns:
      The joined path; it is not created here.
    """
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "isheep_jax")
    return os.path.join(root, *parts)


def xla_cache_dir() -> str:
    """The directory of the persistent XLA compilation cache.

    Returns:
      `$ISHEEP_XLA_CACHE` where it is set ('' means no persistent cache), else
      `cache_dir("xla")`; the directory is not created here.
    """
    return os.environ.get(XLA_CACHE_ENV, cache_dir("xla"))
