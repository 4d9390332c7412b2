"""The `isheep` command line: help, conversion round trip, clear errors with exit code 2."""

import json

import pytest
from helpers import make_hf_model

from isheep_jax import cli


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("import-hf", "import-gguf", "export-hf", "sample", "run", "demo", "status", "report"):
        assert cmd in out


def test_import_sample_export(tmp_path, capsys):
    hf_dir = make_hf_model(str(tmp_path / "hf"), "qwen2")
    assert cli.main(["import-hf", hf_dir, str(tmp_path / "ck")]) == 0
    assert (
        cli.main(
            [
                "sample",
                "--model",
                str(tmp_path / "ck"),
                "--prompt",
                "hello world",
                "--style",
                "raw",
                "--max_new_tokens",
                "4",
                "--temperature",
                "0",
            ]
        )
        == 0
    )
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


def test_run_argument_errors(tmp_path, capsys):
    assert cli.main(["run", "--run_dir", str(tmp_path / "r"), "--gin_file", "no/such.gin"]) == 2
    assert "gin file 'no/such.gin' not found" in capsys.readouterr().err
    assert cli.main(["run", "--run_dir", str(tmp_path / "r"), "--bogus"]) == 2
    assert "unknown argument '--bogus'" in capsys.readouterr().err
    assert cli.main(["status", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_gin_flags_become_bindings():
    assert cli._split_gin_flags(
        ["--gin.LoopConfig.iterations=3", "--gin.synth/SamplingSettings.top_p=0.9"]
    ) == ["LoopConfig.iterations = 3", "synth/SamplingSettings.top_p = 0.9"]


@pytest.mark.parametrize("name", ["runs/demo_cpu.gin", "runs/isheep_paper.gin", "runs/experiment_cpu.gin"])
def test_run_presets_parse(name):
    import gin

    from isheep_jax.evals.runner import EvalConfig
    from isheep_jax.loop.runner import LoopConfig
    from isheep_jax.training.optim import OptimizerConfig
    from isheep_jax.training.trainer import TrainConfig

    cli.parse_gin([name], ["LoopConfig.base_model = 'some/dir'"])
    lc, tc, oc = LoopConfig(), TrainConfig(), OptimizerConfig()
    assert lc.base_model == "some/dir" and lc.k_demos == 5 and lc.rouge_threshold == 0.7
    assert lc.synth_sampling.top_p == 0.95 and lc.respond_sampling.temperature == 1.0
    assert tc.num_epochs == 2.0 and oc.learning_rate == 1e-5
    if "paper" in name:
        assert (
            lc.score_threshold == 8 and lc.respond_sampling.max_new_tokens == 1000 and lc.assessor == "base"
        )
        # Answers end at the chat-turn markers of every supported template.
        assert {"<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|start_header_id|>"} <= set(
            lc.respond_sampling.stop_strings
        )
    assert lc.assess_mode == "logits" and lc.rating_prefill == "Rating: "
    if "experiment" in name:  # the demo's settings, more candidates, the full evaluation sets
        ec = EvalConfig()
        assert lc.iterations == 3 and lc.synthesis_prompts == 32 and lc.keep_top_fraction == 0.5
        assert ec.ifeval_limit == 0 and ec.winrate_limit == 0 and "judge_calibration" in ec.suites
    gin.clear_config()
