"""Where isheep_jax keeps what it builds once per machine: imported models, kernels, XLA programs.

A leaf: it reads the environment at call time (tests and users may set it late) and imports
nothing of the package, so any layer can ask for a cache directory.
"""

from __future__ import annotations

import os
import stat


class CacheError(OSError):
    """A cache folder or file that is not safe to use (someone else could plant code in it)."""


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


def private_dir(path: str) -> str:
    """Creates `path` (and missing parents) readable and writable by this user only (0700).

    Caches hold code that is loaded into the process (compiled kernels, XLA programs), so a
    folder another user could write into must not be one. An existing folder of ours with
    looser permissions is tightened; one owned by someone else is refused.

    Args:
      path: the folder.

    Returns:
      `path`.

    Raises:
      CacheError: the folder belongs to another user.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid != os.getuid():
        raise CacheError(f"{path}: owned by uid {st.st_uid}, not this user; refusing it as a cache folder")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def check_owned_file(path: str) -> None:
    """Raises CacheError unless `path` belongs to this user and only this user can write it.

    Args:
      path: a cached file about to be loaded or executed.
    """
    st = os.stat(path)
    if st.st_uid != os.getuid():
        raise CacheError(f"{path}: owned by uid {st.st_uid}, not this user; refusing to load it")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheError(f"{path}: writable by group or others; refusing to load it")
