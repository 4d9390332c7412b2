"""Caches that hold code we load are this user's only."""

import os
import stat
import subprocess
import sys

import pytest

from isheep_jax.core import cache


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_private_dir_is_created_0700_and_tightened(tmp_path):
    path = cache.private_dir(str(tmp_path / "a" / "b"))
    assert _mode(path) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o777)
    os.chmod(loose, 0o777)
    cache.private_dir(str(loose))
    assert _mode(loose) == 0o700


def test_files_others_can_write_are_refused(tmp_path):
    f = tmp_path / "lib.so"
    f.write_bytes(b"\x7fELF")
    os.chmod(f, 0o700)
    cache.check_owned_file(str(f))
    for mode in (0o720, 0o702):
        os.chmod(f, mode)
        with pytest.raises(cache.CacheError, match="writable by group or others"):
            cache.check_owned_file(str(f))


def test_the_xla_cache_is_created_private(tmp_path):
    xla = tmp_path / "xla"
    env = {**os.environ, "ISHEEP_XLA_CACHE": str(xla), "JAX_PLATFORMS": "cpu"}
    script = "from isheep_jax import cli; cli._enable_compilation_cache()"
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)
    assert _mode(xla) == 0o700
