"""SFT: SeqIO data, loss weights, packing, sharded train step, overfitting, resume, NaN stop."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from helpers import make_hf_model

from isheep_jax.core import hooks
from isheep_jax.model import checkpoint
from isheep_jax.model.convert import hf
from isheep_jax.model.tokenizer import Tokenizer
from isheep_jax.parallel import sharding
from isheep_jax.prompts.templates import user_text
from isheep_jax.sampling.generator import Generator, SamplingSettings
from isheep_jax.training import sft_data
from isheep_jax.training.metrics import read_metrics
from isheep_jax.training.optim import OptimizerConfig, decay_mask, make_optimizer
from isheep_jax.training.train_step import (
    TrainState,
    compile_train_step,
    owned_state,
    per_segment_loss,
    state_shardings,
)
from isheep_jax.training.trainer import (
    TrainConfig,
    TrainingError,
    batch_rows,
    delete_trainer_state,
    make_batch,
    train,
)

PAIRS = [
    {"instruction": "write a short poem about the sea", "input": "", "response": "the sea is blue and wide"},
    {"instruction": "sort these numbers", "input": "3, 1, 2", "response": "1, 2, 3"},
    {"instruction": "what is the capital of france?", "input": "", "response": "paris is the capital."},
    {"instruction": "classify the sentiment", "input": "i love this movie", "response": "positive"},
]


def _write_pairs(path, pairs=PAIRS):
    with open(path, "w") as f:
        for p in pairs:
            f.write(json.dumps(p) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-model")
    hf_dir = make_hf_model(
        str(root / "hf"),
        "llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    hf.import_hf(hf_dir, str(root / "ours"))
    return str(root / "ours")


@pytest.fixture(scope="module")
def task(tiny_model, tmp_path_factory):
    path = _write_pairs(tmp_path_factory.mktemp("pairs") / "kept.jsonl")
    sft_data.register_sft_task("test_train_task", [path], checkpoint.tokenizer_dir(tiny_model), "chat")
    return "test_train_task"


def test_seqio_task_yields_expected_tokens(task, tiny_model):
    """inputs = the chat-rendered prompt's ids, targets = response ids + EOS; nothing else."""
    import seqio

    tok = Tokenizer(checkpoint.tokenizer_dir(tiny_model))
    ex = next(
        seqio.get_mixture_or_task(task)
        .get_dataset(
            sequence_length=None,
            split="train",
            shuffle=False,
            num_epochs=1,
            trim_output_features=False,
            use_cached=False,
        )
        .as_numpy_iterator()
    )
    prompt = tok.render_prompt(PAIRS[0]["instruction"], "chat")
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
    assert ex["inputs"].tolist() == tok.encode(prompt, add_special_tokens=False)
    assert ex["targets"].tolist() == tok.encode(PAIRS[0]["response"], add_special_tokens=False) + [tok.eos_id]


def test_hf_tokenizers_vocabulary_round_trips(tiny_model):
    import tensorflow as tf
    from transformers import AutoTokenizer

    from isheep_jax.training.vocab import HfTokenizersVocabulary, vocabulary_for

    d = checkpoint.tokenizer_dir(tiny_model)
    vocab = vocabulary_for(d)
    assert isinstance(vocab, HfTokenizersVocabulary)
    ref = AutoTokenizer.from_pretrained(d)
    for text in [
        "hello world! how are you today?",
        "  spaces\tand\nnewlines ",
        "<|im_start|>user\nhi<|im_end|>",
        "unicode: é ü 日本 🙂",
        "",
    ]:
        ids = vocab.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False)
        assert vocab.decode(ids) == text
        assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == ids
        assert vocab.decode_tf(tf.constant(ids, tf.int32)).numpy().decode() == text
    assert vocab.eos_id == ref.eos_token_id and vocab.vocab_size == len(ref)
    assert vocab == HfTokenizersVocabulary(d) and vocab != HfTokenizersVocabulary(d + "/other")
    import pickle

    assert pickle.loads(pickle.dumps(vocab)).encode("hello") == vocab.encode("hello")


@pytest.mark.parametrize("pack", [False, True])
def test_loss_weights_only_on_response_tokens(task, tiny_model, pack):
    tok = Tokenizer(checkpoint.tokenizer_dir(tiny_model))
    data = sft_data.load_examples(task, 48, 32, pack=pack)
    a = data.arrays
    assert data.num_examples == 4 and data.num_too_long == 0
    assert (a["decoder_loss_weights"][a["decoder_segment_ids"] == 0] == 0).all()  # no weight on padding
    # Per example, the weighted targets are exactly response + EOS, in order.
    responses = []
    for r in range(data.num_rows):
        for s in np.unique(a["decoder_segment_ids"][r]):
            if s == 0:
                continue
            sel = (a["decoder_segment_ids"][r] == s) & (a["decoder_loss_weights"][r] == 1)
            responses.append(a["decoder_target_tokens"][r][sel].tolist())
            # Inputs are the targets shifted by one inside each segment.
            seg = a["decoder_segment_ids"][r] == s
            assert (a["decoder_input_tokens"][r][seg][1:] == a["decoder_target_tokens"][r][seg][:-1]).all()
            assert a["decoder_positions"][r][seg].tolist() == list(range(seg.sum()))
    assert responses == [tok.encode(p["response"], add_special_tokens=False) + [tok.eos_id] for p in PAIRS]
    assert data.num_target_tokens == sum(len(x) for x in responses)
    if pack:
        assert data.num_rows < 4


def test_too_long_pairs_are_left_out_and_counted(task, tiny_model):
    tok = Tokenizer(checkpoint.tokenizer_dir(tiny_model))
    lengths = sorted(len(tok.encode(p["response"], add_special_tokens=False)) + 1 for p in PAIRS)
    data = sft_data.load_examples(task, 48, lengths[1])  # the two longest responses do not fit
    expected_out = sum(n > lengths[1] for n in lengths)
    assert expected_out >= 1 and data.num_too_long == expected_out and data.num_rows == 4 - expected_out
    with pytest.raises(sft_data.io_utils.DataError, match="none of 4 pairs fits"):
        sft_data.load_examples(task, 3, 3)


def test_bad_pair_file_names_file_and_line(tmp_path, tiny_model):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + "\n" + json.dumps({"instruction": "x"}) + "\n")
    with pytest.raises(
        sft_data.io_utils.DataError, match=r"bad.jsonl:2: missing or empty string field 'response'"
    ):
        sft_data.register_sft_task("bad_task", [str(path)], checkpoint.tokenizer_dir(tiny_model), "chat")


def test_mixture_reads_each_iteration_once(tmp_path, tiny_model):
    tok_dir = checkpoint.tokenizer_dir(tiny_model)
    a = _write_pairs(tmp_path / "a.jsonl", PAIRS[:1])
    b = _write_pairs(tmp_path / "b.jsonl", PAIRS[1:3])
    sft_data.register_sft_task(sft_data.task_name("mix run", 0), [a], tok_dir, "chat")
    sft_data.register_sft_task(sft_data.task_name("mix run", 1), [b], tok_dir, "chat")
    assert sft_data.task_name("mix run", 1) == "isheep_mix_run_iter1"
    sft_data.register_mixture("mix_cumulative", [sft_data.task_name("mix run", i) for i in (0, 1)])
    mixed = sft_data.load_examples("mix_cumulative", 48, 32)
    single = sft_data.load_examples(sft_data.task_name("mix run", 1), 48, 32)
    assert mixed.num_examples == 3
    np.testing.assert_array_equal(
        mixed.arrays["decoder_target_tokens"][1:], single.arrays["decoder_target_tokens"]
    )


def test_packed_loss_equals_unpacked_per_example(task, tiny_model):
    cfg, params = checkpoint.load_model(tiny_model)
    unpacked = sft_data.load_examples(task, 48, 32, pack=False)
    packed = sft_data.load_examples(task, 48, 32, pack=True)
    s_u, c_u = per_segment_loss(cfg, params, unpacked.arrays, 1)
    s_p, c_p = per_segment_loss(cfg, params, packed.arrays, 4)
    per_u = np.asarray(s_u[:, 0] / c_u[:, 0])
    mask = np.asarray(c_p) > 0
    per_p = np.asarray(s_p)[mask] / np.asarray(c_p)[mask]  # row-major = example order
    np.testing.assert_allclose(per_p, per_u, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_tokens", [7, 64])  # chunks that divide the rows' positions and not
def test_chunked_per_segment_loss_equals_the_full_logits(task, tiny_model, chunk_tokens):
    """The held-out loss's chunked cross-entropy: the same per-example sums to f32 round-off."""
    cfg, params = checkpoint.load_model(tiny_model)
    packed = sft_data.load_examples(task, 48, 32, pack=True)
    full = per_segment_loss(cfg, params, packed.arrays, 4)
    chunked = per_segment_loss(cfg, params, packed.arrays, 4, chunk_tokens=chunk_tokens)
    for got, want in zip(chunked, full):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert np.asarray(full[1]).sum() > 0  # target tokens were counted


def test_weight_decay_mask_by_name(tiny_model):
    _, params = checkpoint.load_model(tiny_model)
    mask = decay_mask(params)
    assert mask["layers"]["attn"]["q_proj"]["kernel"] is True
    assert mask["embed"]["embedding"] is True
    norms = [
        v for path, v in jax.tree_util.tree_leaves_with_path(mask) if "norm" in jax.tree_util.keystr(path)
    ]
    assert norms and not any(norms)


def _one_step(cfg, data, mesh):
    # eps 1e-6, not 1e-8: Adam's first step moves a parameter by ~lr * g / (|g| + eps), which
    # turns the round-off of a gradient near 1e-8 (summation order differs between meshes)
    # into a visible parameter difference; the gradients themselves are compared below.
    oc = OptimizerConfig(learning_rate=1e-3, warmup_steps=0, warmup_ratio=0.0, weight_decay=0.1, eps=1e-6)
    opt = make_optimizer(oc, 10)
    _, shard = state_shardings(cfg, opt, mesh)
    _, params = checkpoint.load_model(data["model"], mesh)
    state = TrainState(
        jax.numpy.zeros((), jax.numpy.int32), params, jax.jit(opt.init, out_shardings=shard.opt_state)(params)
    )
    batch = make_batch(data["arrays"], np.arange(4), 2)
    state, m = compile_train_step(cfg, opt, mesh, batch["decoder_input_tokens"].shape)(state, batch)
    return jax.device_get(state.params), jax.device_get(m), state


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)])
def test_train_step_on_meshes_equals_one_device(task, tiny_model, shape):
    cfg = checkpoint.load_config(tiny_model)
    data = {"model": tiny_model, "arrays": sft_data.load_examples(task, 48, 32)}
    ref_params, ref_m, _ = _one_step(cfg, data, sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    params, m, state = _one_step(cfg, data, sharding.make_mesh(*shape))
    np.testing.assert_allclose(m["loss"], ref_m["loss"], rtol=1e-5)
    np.testing.assert_allclose(m["grad_norm"], ref_m["grad_norm"], rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4), params, ref_params)
    # Params and Adam moments are really sharded the same way on the mesh.
    q = state.params["layers"]["attn"]["q_proj"]["kernel"]
    mu = state.opt_state[1][0].mu["layers"]["attn"]["q_proj"]["kernel"]
    assert q.sharding == mu.sharding
    if shape != (8, 1, 1):
        assert q.addressable_shards[0].data.size < q.size


def _buffers(state) -> list[int]:
    return [s.data.unsafe_buffer_pointer() for x in jax.tree.leaves(state) for s in x.addressable_shards]


@pytest.mark.parametrize("devices", [1, 8])
def test_owned_state_is_updated_in_place_from_the_first_step(task, tiny_model, devices):
    # Restored arrays can be zero-copy views of host memory that the runtime cannot donate;
    # their first step then writes fresh buffers, which fragments XLA:CPU's host heap (see
    # owned_state). After owned_state every shard of every leaf keeps its buffer, and the
    # values are the restored ones.
    mesh = sharding.make_mesh(devices, 1, 1, devices=jax.devices()[:devices])
    cfg = checkpoint.load_config(tiny_model)
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=0, warmup_ratio=0.0), 10)
    _, shard = state_shardings(cfg, opt, mesh)
    _, params = checkpoint.load_model(tiny_model, mesh)
    restored = TrainState(
        jax.numpy.zeros((), jax.numpy.int32), params, jax.jit(opt.init, out_shardings=shard.opt_state)(params)
    )
    state = owned_state(restored, shard)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), state, restored)
    assert jax.tree.map(lambda x: x.sharding, state) == shard
    batch = make_batch(sft_data.load_examples(task, 48, 32), np.arange(4), 2)
    step = compile_train_step(cfg, opt, mesh, batch["decoder_input_tokens"].shape)
    before = _buffers(state)
    state, _ = step(state, batch)
    assert _buffers(state) == before


@pytest.mark.parametrize(
    "change", [dict(remat_policy="full"), dict(remat_policy="dots"), dict(scan_layers=False)]
)
def test_remat_and_unrolled_layers_equal_the_default_step(task, tiny_model, change):
    """Memory knobs change what is stored or how the layers are compiled, not the math."""
    cfg = checkpoint.load_config(tiny_model)
    assert cfg.remat_policy == "none" and cfg.scan_layers
    data = {"model": tiny_model, "arrays": sft_data.load_examples(task, 48, 32)}
    mesh = sharding.make_mesh(1, 2, 2, devices=jax.devices()[:4])
    ref_params, ref_m, _ = _one_step(cfg, data, mesh)
    tc = TrainConfig(**{k: v for k, v in change.items()})
    params, m, _ = _one_step(tc.model_config(cfg), data, mesh)
    np.testing.assert_allclose(m["loss"], ref_m["loss"], rtol=1e-6)
    np.testing.assert_allclose(m["grad_norm"], ref_m["grad_norm"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4), params, ref_params)


def test_library_attention_equals_ours_on_packed_rows():
    """`fused_attention` (what attention_impl='cudnn' calls, here through the same API's XLA
    implementation: no cuDNN on CPU) takes our layouts and packed-segment mask and gives our
    attention and its gradients; the cuDNN kernel itself is checked on a GPU by
    benchmarks/check_cudnn_attention.py."""
    from isheep_jax.model import layers
    from isheep_jax.model.config import ConfigError

    b, t, h, kvh, d = 2, 12, 4, 2, 16
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(kq, (b, t, h, d))
    k, v = jax.random.normal(kk, (b, t, kvh, d)), jax.random.normal(kv, (b, t, kvh, d))
    seg = jax.numpy.asarray([[1] * 5 + [2] * 7, [1] * 9 + [0] * 3])  # two packed rows, one padded
    mask = layers.segment_causal_mask(seg)
    ours = lambda q, k, v: layers.attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask)  # noqa: E731
    lib = lambda q, k, v: layers.fused_attention(q, k, v, mask, implementation="xla")  # noqa: E731
    keep = (seg != 0)[:, :, None, None]  # a padding query attends to nothing: its output is undefined
    np.testing.assert_allclose(
        jax.numpy.where(keep, lib(q, k, v), 0), jax.numpy.where(keep, ours(q, k, v), 0), atol=1e-5
    )
    loss = lambda f: lambda *a: jax.numpy.sum(jax.numpy.where(keep, f(*a), 0) ** 2)  # noqa: E731
    for g_lib, g_ours in zip(
        jax.grad(loss(lib), (0, 1, 2))(q, k, v), jax.grad(loss(ours), (0, 1, 2))(q, k, v)
    ):
        np.testing.assert_allclose(g_lib, g_ours, atol=1e-4)
    small = checkpoint.ModelConfig(
        vocab_size=8,
        hidden_size=8,
        intermediate_size=8,
        num_layers=1,
        num_heads=1,
        num_kv_heads=1,
        head_dim=8,
    )
    with pytest.raises(ConfigError, match="cudnn.*bfloat16"):
        TrainConfig(attention_impl="cudnn").model_config(small)
    # Params (and so `isheep plan` for a GPU run) come out the same on a host without cuDNN.
    from isheep_jax.model.params import abstract_params

    gpu_cfg = TrainConfig(attention_impl="cudnn", compute_dtype="bfloat16").model_config(small)
    assert abstract_params(gpu_cfg) == abstract_params(small.replace(dtype="bfloat16"))


@pytest.mark.parametrize("t", [384, 400, 512])
def test_block_causal_attention_equals_full_attention(t):
    """causal=True cuts the queries into blocks that score only the keys up to their own end;
    on packed rows with padding it gives the full masked attention and its gradients."""
    from isheep_jax.model import layers

    assert [layers.causal_blocks(n) for n in (8, 255, 256, 320, 384, 400, 512, 2048, 4096)] == [
        1,
        1,
        2,
        2,
        3,
        3,
        4,
        8,
        8,
    ]
    assert layers.causal_block_bounds(400) == [(0, 133), (133, 266), (266, 400)]
    b, h, kvh, d = 2, 4, 2, 8
    kq, kk, kv = jax.random.split(jax.random.key(1), 3)
    q = jax.random.normal(kq, (b, t, h, d))
    k, v = jax.random.normal(kk, (b, kvh, t, d)), jax.random.normal(kv, (b, kvh, t, d))
    seg = np.zeros((b, t), np.int32)
    seg[0, :100], seg[0, 100:300], seg[0, 300:] = 1, 2, 3  # packed segments across block edges
    seg[1, : t - 50] = 1  # padded
    mask = layers.segment_causal_mask(jax.numpy.asarray(seg))
    keep = jax.numpy.asarray(seg != 0)[:, :, None, None]
    blocked = lambda q, k, v: layers.attention(q, k, v, mask, causal=True)  # noqa: E731
    full = lambda q, k, v: layers.attention(q, k, v, mask)  # noqa: E731
    np.testing.assert_allclose(
        jax.numpy.where(keep, blocked(q, k, v), 0), jax.numpy.where(keep, full(q, k, v), 0), atol=1e-5
    )
    loss = lambda f: lambda *a: jax.numpy.sum(jax.numpy.where(keep, f(*a), 0) ** 2)  # noqa: E731
    for g_blocked, g_full in zip(
        jax.grad(loss(blocked), (0, 1, 2))(q, k, v), jax.grad(loss(full), (0, 1, 2))(q, k, v)
    ):
        np.testing.assert_allclose(g_blocked, g_full, atol=1e-4)
    with pytest.raises(ValueError, match="as many keys as queries"):
        layers.attention(q, k[:, :, :-128], v[:, :, :-128], mask[..., :-128], causal=True)


def test_batch_rows_cover_each_epoch_once():
    rows = np.concatenate([batch_rows(10, 4, s, seed=1, num_epochs=2) for s in range(5)])
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:20]) == list(range(10))
    assert (rows[:10] != np.arange(10)).any()  # shuffled
    np.testing.assert_array_equal(batch_rows(10, 4, 3, 1, 2), batch_rows(10, 4, 3, 1, 2))
    tail = batch_rows(10, 4, 4, seed=1, num_epochs=1.5)  # samples 16..19 are past 1.5 epochs
    assert (tail == -1).all()


def test_overfits_and_generates_memorised_response(task, tiny_model, tmp_path):
    data = sft_data.load_examples(task, 48, 32)
    tc = TrainConfig(batch_size=4, num_epochs=60, seed=0)
    oc = OptimizerConfig(learning_rate=3e-3, warmup_steps=5, schedule="constant", clip_grad_norm=1.0)
    res = train(tiny_model, data, tmp_path / "work", tc, oc, progress=False)
    rows = read_metrics(res.metrics_path)
    assert len(rows) == res.steps == 60
    assert rows[0]["loss"] > 3.0 and res.final_loss < 0.05, (rows[0]["loss"], res.final_loss)
    assert {"loss", "grad_norm", "learning_rate", "tokens_per_s", "target_tokens"} <= set(rows[-1])
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "work" / "tensorboard"))
    cfg, params = checkpoint.load_model(res.model_dir)
    tok = Tokenizer(checkpoint.tokenizer_dir(res.model_dir))
    gen = Generator(cfg, params, tok)
    prompts = [tok.render_prompt(user_text(p["instruction"], p["input"]), "chat") for p in PAIRS]
    out = gen.generate(
        prompts,
        SamplingSettings(max_new_tokens=32, temperature=0.0),
        add_special_tokens=False,
        progress=False,
    )
    assert [o.text for o in out] == [p["response"] for p in PAIRS]
    assert all(o.finish_reason == "eos" for o in out)
    # Already trained: a second call returns the export without training again.
    again = train(tiny_model, data, tmp_path / "work", tc, oc, progress=False)
    assert again.model_dir == res.model_dir and len(read_metrics(res.metrics_path)) == 60


def test_resume_equals_uninterrupted(task, tiny_model, tmp_path):
    """2N steps straight == N steps, restore from the checkpoint, N more steps (bit-identical)."""
    import shutil

    data = sft_data.load_examples(task, 48, 32)
    oc = OptimizerConfig(learning_rate=1e-3, warmup_steps=2)
    # 6 steps; the state is kept so that the test can cut the run back to step 3.
    tc = TrainConfig(batch_size=2, num_epochs=3, seed=5, save_every_steps=3, keep_trainer_state=True)
    res = train(tiny_model, data, tmp_path / "full", tc, oc, progress=False)
    work = tmp_path / "resumed"
    train(tiny_model, data, work, tc, oc, progress=False)
    # As if killed right after step 3's checkpoint: drop the final checkpoint and the export.
    shutil.rmtree(work / "model")
    shutil.rmtree(work / "checkpoints" / "6")
    with pytest.raises(TrainingError, match="other data or settings"):  # never silently mixed
        train(tiny_model, data, work, dataclasses.replace(tc, seed=6), oc, progress=False)
    resumed = train(tiny_model, data, work, tc, oc, progress=False)
    _, p_full = checkpoint.load_model(res.model_dir)
    _, p_res = checkpoint.load_model(resumed.model_dir)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), p_full, p_res)
    assert [r["step"] for r in read_metrics(resumed.metrics_path)] == list(range(1, 7))
    assert resumed.final_loss == res.final_loss


def test_repacked_steps_train_the_same_model(task, tiny_model, tmp_path):
    """Each step's pairs re-packed into fewer rows: the same losses and parameters to float
    round-off as every step computing batch_size rows, in fewer row-steps."""
    data = sft_data.load_examples(task, 48, 64)  # rows of 112 tokens; the pairs have 34 to 49
    oc = OptimizerConfig(learning_rate=1e-3, warmup_steps=1)
    tc = TrainConfig(batch_size=4, num_epochs=1.5, seed=3)  # steps of 4 pairs, then 2 (6 of 4 pairs)
    rows = [make_batch(data, batch_rows(data.num_rows, 4, s, 3, 1.5), 1, [1, 2, 4]) for s in range(2)]
    assert [r["decoder_segment_ids"].shape[1] for r in rows] == [2, 1]
    packed = train(tiny_model, data, tmp_path / "packed", tc, oc, progress=False)
    fixed = train(
        tiny_model, data, tmp_path / "fixed", dataclasses.replace(tc, repack_steps=False), oc, progress=False
    )
    got, want = read_metrics(packed.metrics_path), read_metrics(fixed.metrics_path)
    assert [r["tokens"] for r in got] == [r["tokens"] for r in want]
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in want], rtol=1e-5)
    _, p_packed = checkpoint.load_model(packed.model_dir)
    _, p_fixed = checkpoint.load_model(fixed.model_dir)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6), p_packed, p_fixed
    )


def test_trainer_state_is_deleted_after_the_export_unless_kept(task, tiny_model, tmp_path):
    import shutil

    data = sft_data.load_examples(task, 48, 32)
    oc = OptimizerConfig(learning_rate=1e-3, warmup_steps=2)
    tc = TrainConfig(batch_size=2, num_epochs=2, seed=5, save_every_steps=2)  # 4 steps
    kept = train(
        tiny_model,
        data,
        tmp_path / "kept",
        dataclasses.replace(tc, keep_trainer_state=True),
        oc,
        progress=False,
    )
    assert sorted(os.listdir(tmp_path / "kept" / "checkpoints")) == ["2", "4"]
    res = train(tiny_model, data, tmp_path / "work", tc, oc, progress=False)
    assert not (tmp_path / "work" / "checkpoints").exists()  # the default: deleted after the export
    assert checkpoint.is_complete(res.model_dir) and (tmp_path / "work" / "metrics.jsonl").exists()
    _, p_kept = checkpoint.load_model(kept.model_dir)
    _, p_res = checkpoint.load_model(res.model_dir)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), p_kept, p_res)
    # After the export a rerun reads its result back and never looks for the deleted state.
    again = train(tiny_model, data, tmp_path / "work", tc, oc, progress=False)
    assert (again.steps, again.final_loss) == (res.steps, res.final_loss) == (4, kept.final_loss)
    # Killed between the export and the deletion: the rerun deletes the leftover state.
    shutil.copytree(tmp_path / "kept" / "checkpoints", tmp_path / "work" / "checkpoints")
    (tmp_path / "work" / "checkpoints" / "5.orbax-checkpoint-tmp-123").mkdir()  # a killed save's
    train(tiny_model, data, tmp_path / "work", tc, oc, progress=False)
    assert not (tmp_path / "work" / "checkpoints").exists()
    assert delete_trainer_state(tmp_path / "work") is False  # nothing left to delete

    # The final state is not saved only to be deleted: a run killed during its export has
    # its periodic checkpoints, and its rerun redoes the steps after them, to the same model.
    def killed_export(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint, "save_model", killed_export)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_model, data, tmp_path / "killed", tc, oc, progress=False)
    assert sorted(os.listdir(tmp_path / "killed" / "checkpoints")) == ["2"]
    redone = train(tiny_model, data, tmp_path / "killed", tc, oc, progress=False)
    _, p_redone = checkpoint.load_model(redone.model_dir)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), p_kept, p_redone)


def test_trainer_state_is_never_deleted_unless_it_is_ours_and_exported(tmp_path):
    work = tmp_path / "work"
    (work / "checkpoints" / "3" / "state").mkdir(parents=True)
    with pytest.raises(TrainingError, match="not a complete export"):  # the state is the only copy
        delete_trainer_state(work)
    (work / "model").mkdir()
    (work / "model" / "model.json").write_text("{}")  # what checkpoint.is_complete looks for
    for foreign in ("notes.txt", "7", "latest"):
        path = work / "checkpoints" / foreign
        if foreign == "notes.txt":
            path.write_text("mine")
        else:
            path.mkdir()  # a folder, but no orbax step of ours: a non-step name, or empty
        with pytest.raises(TrainingError, match=f"holds {foreign}, which is not an orbax step folder"):
            delete_trainer_state(work)
        assert path.exists() and (work / "checkpoints" / "3" / "state").exists()  # nothing deleted
        (path.rmdir if path.is_dir() else path.unlink)()
    assert delete_trainer_state(work) is True
    assert sorted(os.listdir(work)) == ["model"]  # only WORK/checkpoints went


def test_non_finite_loss_stops_with_last_good_checkpoint(task, tiny_model, tmp_path):
    data = sft_data.load_examples(task, 48, 32)
    oc = OptimizerConfig(learning_rate=1e30, warmup_steps=0, warmup_ratio=0.0, clip_grad_norm=0.0)
    tc = TrainConfig(batch_size=2, num_epochs=10, save_every_steps=1)
    with pytest.raises(
        TrainingError, match=r"non-finite loss .* at step \d+.*Last good checkpoint: step \d+"
    ):
        train(tiny_model, data, tmp_path / "nan", tc, oc, progress=False)
    assert not checkpoint.is_complete(tmp_path / "nan" / "model")
    steps = sorted(int(s) for s in os.listdir(tmp_path / "nan" / "checkpoints") if s.isdigit())
    assert steps  # the good checkpoint(s) before the blow-up survive


class _CountingHooks(hooks.Hooks):
    def __init__(self):
        self.events = []

    def before_train_step(self):
        self.events.append("before")

    def after_train_step(self):
        self.events.append("after")


def test_trainer_runs_installed_step_hooks_around_every_step(task, tiny_model, tmp_path):
    data = sft_data.load_examples(task, 48, 32)
    tc = TrainConfig(batch_size=2, num_epochs=2, seed=0)
    with hooks.installed(_CountingHooks()) as counted:
        res = train(tiny_model, data, tmp_path / "work", tc, OptimizerConfig(), progress=False)
    assert counted.events == ["before", "after"] * res.steps and res.steps > 1
