"""The `isheep` command line: help, conversion round trip, clear errors with exit code 2."""

import json

import pytest

from conftest import make_hf_model
from isheep_jax import cli


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("import-hf", "import-gguf", "export-hf", "sample", "demo"):
        assert cmd in out


def test_import_sample_export(tmp_path, capsys):
    hf_dir = make_hf_model(str(tmp_path / "hf"), "qwen2")
    assert cli.main(["import-hf", hf_dir, str(tmp_path / "ck")]) == 0
    assert cli.main(["sample", "--model", str(tmp_path / "ck"), "--prompt", "hello world", "--style", "raw",
                     "--max_new_tokens", "4", "--temperature", "0"]) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("{")][-1]
    assert json.loads(line)["prompt"] == "hello world"
    assert cli.main(["export-hf", str(tmp_path / "ck"), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_errors_name_the_problem(tmp_path, capsys):
    hf_dir = make_hf_model(str(tmp_path / "hf"), "llama")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    assert cli.main(["import-hf", hf_dir, str(tmp_path / "ck")]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "GPT2LMHeadModel" in err
    assert cli.main(["import-gguf", str(tmp_path / "missing.gguf"), str(tmp_path / "ck2")]) == 2
    assert "missing.gguf: no such GGUF file" in capsys.readouterr().err
