"""CI's own checks: a skipped test fails a run with ISHEEP_NO_SKIPS=1 (as .ci/run sets it)."""

import os
import subprocess
import sys

from helpers import REPO


def test_a_skipped_test_fails_the_run_only_when_skips_are_not_allowed(tmp_path):
    (tmp_path / "test_probe.py").write_text(
        "import pytest\n\n"
        "def test_needs_data():\n    pytest.skip('no data here')\n\n"
        "def test_ok():\n    pass\n"
    )
    # Our conftest as a plugin, so its hooks judge a test file outside tests/.
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rs",
        "-p",
        "conftest",
        "-p",
        "no:cacheprovider",
        "test_probe.py",
    ]
    env = {k: v for k, v in os.environ.items() if k != "ISHEEP_NO_SKIPS"}  # CI sets it for this run
    env["PYTHONPATH"] = str(REPO / "tests")
    strict = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, env={**env, "ISHEEP_NO_SKIPS": "1"}
    )
    assert strict.returncode == 1, strict.stdout
    assert (
        "1 test(s) skipped that CI must run" in strict.stdout
        and "test_probe.py::test_needs_data" in strict.stdout
    )
    relaxed = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert relaxed.returncode == 0 and "SKIPPED [1]" in relaxed.stdout, relaxed.stdout
