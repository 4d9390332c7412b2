"""Native start-up chatter on fd 2 is filtered at import; everything else still shows."""

import os
import subprocess
import sys

from isheep_jax.backends.cpu.host_memory import accelerator_present
from isheep_jax.core import native_logs


def test_quiet_import_drops_the_known_lines_and_keeps_the_rest(tmp_path, monkeypatch, capfd):
    (tmp_path / "chatty_native_mod.py").write_text(
        "import os\n"
        "os.write(2, b'I0000 00:00 1 port.cc:153] oneDNN custom operations are on. You may see...\\n')\n"
        "os.write(2, b'I0000 00:00 1 cudart_stub.cc:31] Could not find cuda drivers on your machine\\n')\n"
        "os.write(2, b'E0000 something real went wrong\\n')\n"
        "VALUE = 7\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = native_logs.quiet_import("chatty_native_mod")
    assert module.VALUE == 7 and native_logs.quiet_import("chatty_native_mod") is module
    err = capfd.readouterr().err
    assert err == "E0000 something real went wrong\n"


def test_training_imports_tensorflow_without_its_start_up_lines():
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "JAX_PLATFORMS")}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import isheep_jax.cli, os; import isheep_jax.training.sft_data; "
            "print(os.environ.get('JAX_PLATFORMS', ''))",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    for noise in ("oneDNN custom operations", "cudart_stub", "absl::InitializeLog"):
        assert noise not in out.stderr, out.stderr
    # No TPU or GPU device node here: the CLI tells JAX to use the CPU before it starts.
    assert out.stdout.strip() == ("" if accelerator_present() else "cpu")
