"""The I-SHEEP loop: run directory rules, chunked resume, and real end-to-end runs on SmolLM2
(uninterrupted, and SIGKILLed at several points then resumed: the data must be identical)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from isheep_jax.core import io_utils
from isheep_jax.loop.run_dir import RunDir, RunError
from isheep_jax.loop.runner import LoopConfig, status
from isheep_jax.model import checkpoint

# A small real run: 4 synthesis prompts, short generations, 2 train steps of batch 2.
E2E_BINDINGS = [
    "--gin.LoopConfig.iterations=1",
    "--gin.LoopConfig.synthesis_prompts=4",
    "--gin.LoopConfig.chunk_size=2",
    "--gin.synth/SamplingSettings.max_new_tokens=128",
    "--gin.respond/SamplingSettings.max_new_tokens=128",
    "--gin.rate/SamplingSettings.max_new_tokens=16",
    "--gin.LoopConfig.score_threshold=0",
    "--gin.TrainConfig.max_steps=2",
    "--gin.TrainConfig.num_epochs=8",
    "--gin.TrainConfig.batch_size=2",
    "--gin.TrainConfig.save_every_steps=1",
    "--gin.OptimizerConfig.learning_rate=1e-4",
    # A few prompts of each evaluation suite (the demo config turns evaluation on).
    "--gin.EvalConfig.ifeval_limit=4",
    "--gin.EvalConfig.winrate_limit=2",
    "--gin.EvalConfig.calibration_limit=2",
    "--gin.eval/SamplingSettings.max_new_tokens=16",
    "--gin.judge/SamplingSettings.max_new_tokens=4",
]
ARTIFACTS = ("instructions", "responses", "assessments", "kept", "dropped")


def _isheep(run_dir, env_extra=None, bindings=()):
    env = {**os.environ, **(env_extra or {})}
    cmd = [
        sys.executable,
        "-m",
        "isheep_jax.cli",
        "run",
        "--gin_file",
        "runs/demo_cpu.gin",
        "--run_dir",
        str(run_dir),
        *E2E_BINDINGS,
        *bindings,
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=900):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _kill_when(proc, exists, timeout=600) -> bool:
    """SIGKILLs proc as soon as exists() is true; False if the run ended first."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if exists():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    proc.kill()
    raise TimeoutError("run did not reach the kill point")


# ---------------------------------------------------------------------------- run directory rules
def test_loop_config_rejects_bad_choices():
    with pytest.raises(ValueError, match="assessor must be one of"):
        LoopConfig(base_model="x", assessor="judge")
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        LoopConfig(base_model="x", chunk_size=0)


def test_manifest_refuses_another_config_unless_forced(tmp_path):
    run = RunDir(tmp_path / "run")
    run.open("LoopConfig.iterations = 2\n")
    run.open("LoopConfig.iterations = 2\n")  # same config: resumes
    with pytest.raises(RunError, match="started with another config"):
        run.open("LoopConfig.iterations = 3\n")
    manifest = run.open("LoopConfig.iterations = 3\n", force=True)
    assert manifest["history"][-1]["event"] == "forced config change"
    assert (tmp_path / "run" / "config.gin").read_text() == "LoopConfig.iterations = 3\n"


def test_unwritable_run_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunError, match="cannot create run directory"):
        RunDir(blocker / "run").open("x")


# ---------------------------------------------------------------------------- real runs (SmolLM2)
@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, smollm2_dir):
    """One uninterrupted run through the CLI (the demo config with small counts)."""
    run_dir = tmp_path_factory.mktemp("e2e") / "run"
    _finish(_isheep(run_dir, _cache_env(smollm2_dir)))
    return run_dir


def _cache_env(smollm2_dir):
    """Point the embedded-model cache at the session's imported SmolLM2 (no second import)."""
    cache = os.path.join(os.path.dirname(smollm2_dir), "cache")
    os.makedirs(cache, exist_ok=True)
    link = os.path.join(cache, "smollm2-135m-instruct")
    if not os.path.exists(link):
        os.symlink(smollm2_dir, link)
    # One CPU device: the 8-fake-device mesh is tested elsewhere and is slow on 2 cores.
    return {"ISHEEP_CACHE": cache, "XLA_FLAGS": ""}


@pytest.mark.slow
def test_end_to_end_artifacts_are_consistent(reference_run):
    it = reference_run / "iter_0"
    rows = {name: io_utils.read_jsonl(it / f"{name}.jsonl") for name in ARTIFACTS}
    summary = json.loads((it / "summary.json").read_text())
    dropped = rows["dropped"]
    stages = ("synthesize", "respond", "assess", "filter")
    assert all(d["reason"] and d["stage"] in stages for d in dropped)
    n = {s: sum(d["stage"] == s for d in dropped) for s in stages}
    assert summary["candidates_parsed"] == len(rows["instructions"]) + n["synthesize"] > 0
    assert len(rows["instructions"]) == len(rows["responses"]) + n["respond"]
    assert len(rows["responses"]) == len(rows["assessments"]) == len(rows["kept"]) + n["assess"] + n["filter"]
    # Logits mode: every pair has an expected score (nothing to parse), and the demo keeps the
    # better half of the rated pairs by their mean.
    for r in rows["assessments"]:
        for kind in ("quality", "following"):
            assert 1 <= r[f"{kind}_score"] <= 10 and r[f"{kind}_reason"] is None
            assert len(r[f"{kind}_probs"]) == 10 and 0 < r[f"{kind}_score_mass"] <= 1
    assert n["assess"] == sum(d["reason"] == "below_top_fraction" for d in dropped)
    assert len(rows["kept"]) == -(-(len(rows["assessments"]) - n["filter"]) // 2)  # ceil(0.5 * n)
    assert summary["pairs_kept"] == len(rows["kept"]) > 0, "no pair survived: the e2e config is too strict"
    assert sum(summary["dropped_by_reason"].values()) == len(dropped)
    ids = [r["id"] for r in rows["instructions"]]
    assert len(set(ids)) == len(ids)
    # The trained checkpoint loads and differs from the base model.
    assert summary["trained"] and summary["train_steps"] == 2
    # The trainer state (params + Adam moments) is deleted once the model is exported.
    assert not (it / "train" / "checkpoints").exists() and (it / "train" / "metrics.jsonl").exists()
    cfg, trained = checkpoint.load_model(it / "train" / "model")
    _, base = checkpoint.load_model(os.path.join(_base_dir(reference_run)))
    diffs = jax.tree.leaves(
        jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), trained, base)
    )
    assert max(diffs) > 0
    metrics = [json.loads(l) for l in (reference_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [0]
    manifest = json.loads((reference_run / "manifest.json").read_text())
    assert "LoopConfig.synthesis_prompts = 4" in manifest["config"] and len(manifest["config_sha256"]) == 64
    assert status(str(reference_run))["next"] is None
    # Evaluation of the base model once and of the trained model, in the summary too.
    base_eval = json.loads((reference_run / "eval_base" / "eval.json").read_text())
    trained_eval = json.loads((it / "eval" / "eval.json").read_text())
    assert base_eval["model"] == summary["model"] and trained_eval["model"] == str(it / "train" / "model")
    assert trained_eval["ifeval"]["prompt_level"]["total"] == 4 and trained_eval["heldout_loss"]["pairs"] > 0
    wr = trained_eval["winrate"]
    assert wr["wins"] + wr["ties"] + wr["losses"] + wr["invalid"] == 2 and wr["reference"] == summary["model"]
    assert summary["eval"]["heldout_loss"] == trained_eval["heldout_loss"]["loss"]
    assert summary["eval_base"]["heldout_loss"] == base_eval["heldout_loss"]["loss"]
    # Verdicts against the base model, paired on the same prompts, and how well the judges judge.
    assert set(summary["eval_vs_base"]) == {
        "ifeval_prompt_strict",
        "ifeval_prompt_loose",
        "ifeval_instruction_strict",
        "ifeval_instruction_loose",
        "heldout_loss",
    }
    assert all(
        c["verdict"] in ("better", "no detectable change", "worse") for c in summary["eval_vs_base"].values()
    )
    for name in ("base", "model"):
        auc = summary["judge"][name]["logits"]["quality"]["auc"]
        assert auc is None or 0 <= auc <= 1
    assert wr["verdict_mode"] == "logits" and wr["invalid"] == 0 and "first_preferred" in wr["position_bias"]


def _base_dir(run_dir):
    summary = json.loads((run_dir / "iter_0" / "summary.json").read_text())
    return summary["model"]


def _has_step_1(checkpoints) -> bool:
    """Whether step 1's save has begun (the run's one periodic save: the last step's state is
    never saved, and the folder is deleted after the export, so it may vanish)."""
    try:
        return any(p.name.startswith("1") for p in checkpoints.iterdir())
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_run(reference_run, tmp_path, smollm2_dir):
    """SIGKILL during synthesis, assessment, training and a checkpoint save; resume each time.
    (Evaluation is off here: its resume is tested in test_evaluate.py.)"""
    run_dir = tmp_path / "run"
    it = run_dir / "iter_0"
    env = _cache_env(smollm2_dir)
    no_eval = ["--gin.LoopConfig.evaluate=False"]
    kill_points = [
        ("synthesis", lambda: (it / "chunks" / "synthesize" / "00000.jsonl").exists()),
        ("assessment", lambda: (it / "chunks" / "assess" / "00000.jsonl").exists()),
        ("training", lambda: (it / "train" / "metrics.jsonl").exists()),
        ("checkpoint save", lambda: _has_step_1(it / "train" / "checkpoints")),
    ]
    killed = []
    for name, point in kill_points:
        if _kill_when(_isheep(run_dir, env, no_eval), point):
            killed.append(name)
            assert not (it / "summary.json").exists()
    assert len(killed) >= 3, killed  # the run got interrupted at (nearly) every point
    out = _finish(_isheep(run_dir, env, no_eval))
    assert "iteration 0" in out
    for name in ARTIFACTS:
        assert io_utils.read_jsonl(it / f"{name}.jsonl") == io_utils.read_jsonl(
            reference_run / "iter_0" / f"{name}.jsonl"
        ), name
    _, ref = checkpoint.load_model(reference_run / "iter_0" / "train" / "model")
    _, res = checkpoint.load_model(it / "train" / "model")
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), ref, res)
    assert not (it / "train" / "checkpoints").exists()  # deleted after the export, resumed or not
    ref_loss = [r["loss"] for r in io_utils.read_jsonl(reference_run / "iter_0" / "train" / "metrics.jsonl")]
    assert [r["loss"] for r in io_utils.read_jsonl(it / "train" / "metrics.jsonl")] == ref_loss


@pytest.mark.slow
def test_report_and_status_of_a_finished_run(reference_run, capsys):
    from isheep_jax import cli
    from isheep_jax.loop.report import write_report

    path = write_report(str(reference_run))
    text = open(path).read()
    assert "| 0 |" in text and "Example kept pairs" in text
    assert "## Evaluation" in text and "| base model |" in text and "| after iteration 0 |" in text
    assert text.index("Verdicts against the base model") < text.index("| iteration | candidates")
    assert "How well the judges judge" in text and "judge AUC on the calibration pairs" in text
    for png in ("kept_fraction.png", "scores.png", "train_loss.png", "eval.png"):
        assert (reference_run / "report" / png).stat().st_size > 1000
    assert cli.main(["status", str(reference_run)]) == 0
    out = capsys.readouterr().out
    assert (
        "iteration 0: done synthesize, respond, assess, filter, train, eval, summary" in out
        and "next: nothing" in out
    )


def test_empty_iteration_is_reported_and_never_trained(tmp_path):
    """A random tiny model writes no parseable instruction: nothing survives, nothing is trained.
    With stop_when_empty=False the loop carries the model over to the next iteration."""
    from helpers import make_hf_model

    from isheep_jax.loop.runner import Loop
    from isheep_jax.model.convert import hf
    from isheep_jax.sampling.generator import SamplingSettings

    hf_dir = make_hf_model(str(tmp_path / "hf"), "llama", max_position_embeddings=4096)
    hf.import_hf(hf_dir, str(tmp_path / "base"))
    small = SamplingSettings(max_new_tokens=8, batch_size=4)
    lc = LoopConfig(
        base_model=str(tmp_path / "base"),
        iterations=2,
        synthesis_prompts=2,
        stop_when_empty=False,
        synth_sampling=small,
        respond_sampling=small,
        rate_sampling=small,
    )
    RunDir(tmp_path / "run").open("test")
    summaries = Loop(lc, str(tmp_path / "run")).run_all()
    assert [s["iteration"] for s in summaries] == [0, 1]
    for s in summaries:
        assert s["pairs_kept"] == 0 and not s["trained"] and s["model"] == str(tmp_path / "base")
        assert (tmp_path / "run" / f"iter_{s['iteration']}" / "train_skipped.json").exists()
    lc_stop = LoopConfig(**{**lc.__dict__, "stop_when_empty": True, "iterations": 3})
    RunDir(tmp_path / "run2").open("test")
    assert len(Loop(lc_stop, str(tmp_path / "run2")).run_all()) == 1
    # Training overrides that cannot apply to the base model fail at once, before any sampling.
    from isheep_jax.model.config import ConfigError
    from isheep_jax.training.trainer import TrainConfig

    with pytest.raises(ConfigError, match="cudnn"):
        Loop(lc, str(tmp_path / "run3"), train_config=TrainConfig(attention_impl="cudnn"))
    assert not (tmp_path / "run3").exists()


def test_a_prompt_style_the_base_tokenizer_cannot_render_fails_before_any_sampling(tmp_path):
    import json

    from helpers import make_hf_model

    from isheep_jax.loop.runner import Loop
    from isheep_jax.model.convert import hf

    hf_dir = make_hf_model(str(tmp_path / "hf"), "llama")
    cfg_path = tmp_path / "hf" / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    del tok_cfg["chat_template"]  # a base model: no chat template
    cfg_path.write_text(json.dumps(tok_cfg))
    hf.import_hf(hf_dir, str(tmp_path / "base"))
    RunDir(tmp_path / "run").open("test")
    lc = LoopConfig(base_model=str(tmp_path / "base"), base_prompt_style="raw", tuned_prompt_style="chat")
    with pytest.raises(ValueError, match="LoopConfig.tuned_prompt_style = 'chat': .*has no chat template"):
        Loop(lc, str(tmp_path / "run"))
    assert not list((tmp_path / "run").glob("iter_*"))  # nothing sampled
    Loop(LoopConfig(base_model=str(tmp_path / "base"), tuned_prompt_style="chatml"), str(tmp_path / "run"))


def _tiny_run_at_train(tmp_path, name: str, iterations: int = 1):
    """A run directory whose iterations have finished every stage before training (the stage
    files written directly: a random tiny model keeps no pair of its own); returns iter_0."""
    pairs = [
        {"id": f"p{k}", "instruction": f"repeat the word {w}", "input": "", "response": f"{w} {w}"}
        for k, w in enumerate(["sea", "sky", "sun", "moon"])
    ]
    for i in range(iterations):
        it = tmp_path / name / f"iter_{i}"
        io_utils.write_jsonl(
            it / "instructions.jsonl", [{k: p[k] for k in ("id", "instruction", "input")} for p in pairs]
        )
        for stage in ("responses", "assessments", "kept"):
            io_utils.write_jsonl(it / f"{stage}.jsonl", pairs)
    RunDir(tmp_path / name).open("test")
    return tmp_path / name / "iter_0"


def _tiny_loop(tmp_path, name: str, loop=None, **train):
    from helpers import make_hf_model

    from isheep_jax.loop.runner import Loop
    from isheep_jax.model.convert import hf
    from isheep_jax.parallel import sharding
    from isheep_jax.training.trainer import TrainConfig

    base = tmp_path / "base"
    if not checkpoint.is_complete(base):
        hf.import_hf(make_hf_model(str(tmp_path / "hf"), "llama"), str(base))
    lc = LoopConfig(base_model=str(base), **{"iterations": 1, "evaluate": False, **(loop or {})})
    tc = TrainConfig(
        batch_size=2,
        num_epochs=0,
        max_steps=2,
        save_every_steps=1,
        max_prompt_len=48,
        max_response_len=32,
        **train,
    )
    return Loop(lc, str(tmp_path / name), mesh=sharding.make_mesh(devices=jax.devices()[:1]), train_config=tc)


def test_trainer_state_is_deleted_after_the_export_and_resume_still_works(tmp_path):
    """Default: RUN/iter_<i>/train/checkpoints goes once train/model is exported; kept with
    keep_trainer_state. A run killed before the export resumes from the state, one killed
    after it (state deleted, or not yet) never trains again."""
    import shutil

    from isheep_jax.core import hooks

    class Steps(hooks.Hooks):
        def __init__(self):
            self.count = 0

        def before_train_step(self):
            self.count += 1

    def params(it):
        _, p = checkpoint.load_model(it / "train" / "model")
        return jax.tree.map(np.asarray, p)

    it = _tiny_run_at_train(tmp_path, "run")
    (summary,) = _tiny_loop(tmp_path, "run").run_all()
    assert summary["trained"] and summary["train_steps"] == 2
    assert checkpoint.is_complete(it / "train" / "model") and not (it / "train" / "checkpoints").exists()
    reference = params(it)

    kept = _tiny_run_at_train(tmp_path, "kept")
    _tiny_loop(tmp_path, "kept", keep_trainer_state=True).run_all()
    assert sorted(os.listdir(kept / "train" / "checkpoints")) == ["1", "2"]
    jax.tree.map(np.testing.assert_array_equal, params(kept), reference)

    # Killed after the export, before the state was deleted and the summary written: the
    # resumed run deletes the state and trains nothing again.
    (kept / "summary.json").unlink()
    metrics = (kept / "train" / "metrics.jsonl").read_text()
    with hooks.installed(Steps()) as steps:
        (summary,) = _tiny_loop(tmp_path, "kept").run_all()
    assert (
        steps.count == 0
        and summary["train_steps"] == 2
        and (kept / "train" / "metrics.jsonl").read_text() == metrics
    )
    assert not (kept / "train" / "checkpoints").exists() and checkpoint.is_complete(kept / "train" / "model")

    # Killed before the export, after step 1's checkpoint: training resumes from it.
    killed = _tiny_run_at_train(tmp_path, "killed")
    _tiny_loop(tmp_path, "killed", keep_trainer_state=True).run_all()
    for leftover in ("summary.json", "stage_seconds.json"):
        (killed / leftover).unlink()
    shutil.rmtree(killed / "train" / "model")
    shutil.rmtree(killed / "train" / "checkpoints" / "2")
    with hooks.installed(Steps()) as steps:
        (summary,) = _tiny_loop(tmp_path, "killed").run_all()
    assert (
        steps.count == 1 and summary["train_steps"] == 2 and not (killed / "train" / "checkpoints").exists()
    )
    jax.tree.map(np.testing.assert_array_equal, params(killed), reference)
    # A finished run resumed again changes nothing.
    assert _tiny_loop(tmp_path, "killed").run_all() == [summary]


def test_keep_models_last_deletes_superseded_models_and_the_run_stays_done(tmp_path):
    """keep_models='last': iteration 0's model goes once iteration 1 has trained and finished,
    marked as pruned; the run reads as done, resumes as a no-op and samples from the newest."""
    from isheep_jax.loop.runner import status as run_status

    first = _tiny_run_at_train(tmp_path, "last", iterations=2)
    second = first.parent / "iter_1"
    loop = _tiny_loop(tmp_path, "last", loop={"iterations": 2, "keep_models": "last"})
    summaries = loop.run_all()
    assert [s["trained"] for s in summaries] == [True, True]
    assert not (first / "train" / "model").exists() and checkpoint.is_complete(second / "train" / "model")
    assert json.loads((first / "model_pruned.json").read_text())["superseded_by"] == str(
        second / "train" / "model"
    )
    assert (first / "train" / "metrics.jsonl").exists()  # the training record stays
    assert loop.model_for(2) == str(second / "train" / "model")
    st = run_status(str(tmp_path / "last"))
    assert st["next"] is None and "train" in st["iterations"][0]["done"]
    assert _tiny_loop(tmp_path, "last", loop={"iterations": 2, "keep_models": "last"}).run_all() == summaries
    # The default keeps every model.
    _tiny_run_at_train(tmp_path, "all", iterations=2)
    _tiny_loop(tmp_path, "all", loop={"iterations": 2}).run_all()
    assert all(checkpoint.is_complete(tmp_path / "all" / f"iter_{i}" / "train" / "model") for i in (0, 1))


def test_a_lora_iteration_runs_end_to_end_and_samples_from_the_merged_model(tmp_path):
    """TrainConfig.lora_rank > 0 in the loop: the iteration trains adapters only, its model is
    the merged checkpoint the next iteration samples from, and the adapters sit beside it."""
    from isheep_jax.model.convert import peft

    it = _tiny_run_at_train(tmp_path, "lora")
    loop = _tiny_loop(tmp_path, "lora", lora_rank=4, lora_alpha=8.0)
    (summary,) = loop.run_all()
    assert summary["trained"] and summary["train_steps"] == 2
    assert checkpoint.is_complete(it / "train" / "model") and peft.is_complete(it / "train" / "adapter")
    assert loop.model_for(1) == str(it / "train" / "model")
    info = json.loads((it / "train" / "model" / "model.json").read_text())
    assert info["lora"] == {"rank": 4, "alpha": 8.0, "targets": list(peft.ALL_TARGETS)}
    _, base = checkpoint.load_model(tmp_path / "base")
    _, merged = checkpoint.load_model(it / "train" / "model")
    changed = jax.tree.leaves(
        jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), base, merged)
    )
    assert any(changed) and not all(changed)  # the adapted kernels moved; norms and embeddings did not
