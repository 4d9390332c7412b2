"""Nothing a user owns is ever lost: every command that writes a folder refuses a folder
holding files we did not write, or the input itself, and leaves every file as it was."""

import os

import pytest
from helpers import make_hf_model

from isheep_jax import cli
from isheep_jax.core import io_utils
from isheep_jax.model import checkpoint


def _snapshot(root):
    """Every file under `root` with its bytes."""
    return {
        os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
        for d, _, files in os.walk(root)
        for f in files
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A user's folder: a tiny HF model, a converted checkpoint, and files of their own."""
    root = tmp_path_factory.mktemp("user")
    hf_dir = make_hf_model(str(root / "hf"), "llama")
    assert cli.main(["import-hf", hf_dir, str(root / "ckpt")]) == 0
    (root / "notes.txt").write_text("my notes\n")
    (root / "m.gguf").write_bytes(b"GGUF" + os.urandom(64))  # refused before it is ever parsed
    return root


@pytest.mark.parametrize(
    "argv,message",
    [
        # the folder holding the source (GGUF, HF folder, checkpoint)
        (["import-gguf", "{root}/m.gguf", "{root}"], "holds the input"),
        (["import-hf", "{root}/hf", "{root}"], "holds the input"),
        (["export-hf", "{root}/ckpt", "{root}"], "holds the input"),
        # output = input
        (["import-hf", "{root}/hf", "{root}/hf"], "is the input"),
        (["export-hf", "{root}/ckpt", "{root}/ckpt"], "is the input"),
        # a parent folder of someone else's files (not holding the input)
        (["import-hf", "{root}/hf", "{root}/ckpt"], "a complete checkpoint already exists"),
        (["export-hf", "{root}/ckpt", "{root}/hf"], "not empty (config.json, generation_config.json"),
    ],
)
def test_commands_refuse_foreign_or_input_folders_and_keep_every_file(models, capsys, argv, message):
    before = _snapshot(models)
    assert cli.main([a.format(root=models) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert _snapshot(models) == before


def test_a_parent_folder_with_other_files_is_refused(models, tmp_path, capsys):
    home = tmp_path / "home"
    (home / "projects").mkdir(parents=True)
    (home / "projects" / "thesis.tex").write_text("\\begin{document}")
    (home / ".bashrc").write_text("export X=1\n")
    before = _snapshot(home)
    for argv in (
        ["import-hf", str(models / "hf"), str(home)],
        ["export-hf", str(models / "ckpt"), str(home)],
    ):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert f"{home}: not empty (.bashrc, projects) and not an interrupted save of ours" in err, err
    assert _snapshot(home) == before


def test_an_interrupted_save_of_ours_is_cleared_and_redone(models, tmp_path):
    out = tmp_path / "out"
    io_utils.claim_output_dir(out)
    (out / "params").mkdir()
    (out / "params" / "half_written").write_bytes(b"\0" * 10)  # as if killed mid-save
    cfg, params = checkpoint.load_model(str(models / "ckpt"))
    checkpoint.save_model(out, params, cfg, tokenizer_dir=checkpoint.tokenizer_dir(str(models / "ckpt")))
    assert checkpoint.is_complete(out)
    assert not (out / io_utils.IN_PROGRESS).exists() and not (out / "params" / "half_written").exists()
    # An interrupted HF export is redone the same way; a finished one is kept and refused.
    hf_out = tmp_path / "hf_out"
    io_utils.claim_output_dir(hf_out)
    (hf_out / ".part-00000.safetensors").write_bytes(b"junk")
    assert cli.main(["export-hf", str(models / "ckpt"), str(hf_out)]) == 0
    assert (hf_out / "model.safetensors").exists() and not (hf_out / ".part-00000.safetensors").exists()
    assert not (hf_out / io_utils.IN_PROGRESS).exists()
    assert cli.main(["export-hf", str(models / "ckpt"), str(hf_out)]) == 2


def test_output_dir_rules():
    assert io_utils.output_dir_problem("/nonexistent/new") is None
    assert "is the input" in io_utils.output_dir_problem("/data/x/", ["/data/x"])
    assert "holds the input" in io_utils.output_dir_problem("/data", ["/data/x/y.gguf"])
    assert io_utils.output_dir_problem("/data/xy", ["/data/x"]) is None  # a sibling, not a parent


def test_the_trainers_export_refuses_a_folder_of_other_files(models, tmp_path):
    """The trainer exports through save_model: a work/model folder holding files we did not
    write is refused before anything is written, and kept."""
    out = tmp_path / "work" / "model"
    out.mkdir(parents=True)
    (out / "weights_i_care_about.bin").write_bytes(b"\1\2\3")
    cfg, params = checkpoint.load_model(str(models / "ckpt"))
    with pytest.raises(io_utils.OutputDirError, match=r"not empty \(weights_i_care_about.bin\)"):
        checkpoint.save_model(out, params, cfg, tokenizer_dir=checkpoint.tokenizer_dir(str(models / "ckpt")))
    assert [p.name for p in out.iterdir()] == ["weights_i_care_about.bin"]
    assert (out / "weights_i_care_about.bin").read_bytes() == b"\1\2\3"
