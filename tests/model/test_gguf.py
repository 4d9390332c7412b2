"""GGUF import of the embedded SmolLM2-135M-Instruct against transformers' own GGUF load."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from isheep_jax.model import checkpoint
from isheep_jax.model import params as P
from isheep_jax.model.convert.gguf_import import gguf_name, unpermute_qk
from isheep_jax.model.tokenizer import Tokenizer

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Water boils at a temperature of",
    "Once upon a time, in a small village, there lived",
]


def test_unpermute_inverts_llama_cpp_permutation():
    n_heads, head_dim, hidden = 3, 8, 5
    w = np.arange(n_heads * head_dim * hidden, dtype=np.float32).reshape(n_heads * head_dim, hidden)
    # llama.cpp's convert script: reshape(n_head, 2, dim // n_head // 2, ...).swapaxes(1, 2)
    permuted = w.reshape(n_heads, 2, head_dim // 2, hidden).swapaxes(1, 2).reshape(w.shape)
    np.testing.assert_array_equal(unpermute_qk(permuted, n_heads), w)


def test_gguf_names():
    assert gguf_name("model.layers.3.self_attn.q_proj.weight") == "blk.3.attn_q.weight"
    assert gguf_name("model.layers.0.post_attention_layernorm.weight") == "blk.0.ffn_norm.weight"
    assert gguf_name("lm_head.weight") == "output.weight"
    with pytest.raises(KeyError):
        gguf_name("model.layers.0.mystery.weight")


def test_smollm2_logits_match_transformers_gguf_load(smollm2_dir, smollm2_torch):
    """Both sides dequantise the same Q4_1/Q8_0 blocks to f32 exactly, so only f32 summation
    order differs: over 30 layers that stays far below 1e-2 on logits of magnitude ~10-30
    (measured ~2e-4), and the next-token distributions agree to KL < 1e-6."""
    cfg, params = checkpoint.load_model(smollm2_dir)
    tok = Tokenizer(checkpoint.tokenizer_dir(smollm2_dir))
    fwd = jax.jit(lambda p, t: P.forward(cfg, p, t))
    for prompt in PROMPTS:
        ids = np.asarray([tok.encode(prompt)])
        with torch.no_grad():
            ref = smollm2_torch(torch.tensor(ids)).logits.numpy()[0]
        ours = np.asarray(fwd(params, jnp.asarray(ids)))[0]
        assert np.abs(ours - ref).max() < 1e-2, prompt
        logp = jax.nn.log_softmax(ref[-1])
        logq = jax.nn.log_softmax(ours[-1])
        assert float(jnp.sum(jnp.exp(logp) * (logp - logq))) < 1e-6
        np.testing.assert_array_equal(ours.argmax(-1), ref.argmax(-1))


def test_smollm2_config_and_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    cfg = checkpoint.load_config(smollm2_dir)
    assert (cfg.hidden_size, cfg.num_layers, cfg.vocab_size, cfg.num_kv_heads) == (576, 30, 49152, 3)
    assert cfg.tie_embeddings and cfg.model_type == "llama"
    assert cfg.num_params() == 134_515_008
    ours = Tokenizer(checkpoint.tokenizer_dir(smollm2_dir))
    theirs = AutoTokenizer.from_pretrained(checkpoint.tokenizer_dir(smollm2_dir))
    for text in PROMPTS + ["Ünïcödé ✓ and   spaces\n\nnew lines", ""]:
        assert ours.encode(text) == theirs(text)["input_ids"]
    messages = [{"role": "user", "content": "Name three colours."}]
    assert ours.apply_chat_template(messages) == theirs.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert ours.eos_id == theirs.eos_token_id


def _tiny_gguf(path, extra_tensors=()):
    """A minimal llama GGUF (metadata and a few tensors; never dequantised by the test)."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(16)
    for name, shape in [("token_embd.weight", (16, 8)), ("blk.0.attn_q.weight", (8, 8)), *extra_tensors]:
        w.add_tensor(name, np.zeros(shape, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


@pytest.mark.parametrize(
    "extra,message",
    [
        ([("rope_freqs.weight", (2,))], "holds rope_freqs.weight, RoPE scaling stored as per-dimension"),
        (
            [("blk.0.attn_sinks.weight", (2,))],
            r"tensors not covered by the llama name map: \['blk.0.attn_sinks",
        ),
    ],
)
def test_gguf_tensors_the_importer_does_not_map_are_refused_by_name(tmp_path, extra, message):
    from isheep_jax.model.config import ConfigError
    from isheep_jax.model.convert import gguf_import

    path = _tiny_gguf(tmp_path / "m.gguf", extra)
    with pytest.raises(ConfigError, match=message):
        gguf_import.import_gguf(path, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
