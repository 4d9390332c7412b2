"""Builders shared by the tests: tiny tokenizers and Hugging Face models made offline, and the
public data beside the checkout. Imported by name (`from helpers import make_hf_model`)."""

import functools
import json
import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]  # the checkout
SHARED_DATA = REPO.parent / "shared" / "data"  # ../shared/data beside it (public prompts and seeds)

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "write a short poem about the sea",
    "what is the capital of france? paris is the capital.",
    "sort these numbers: 3, 1, 2",
    "explain why the sky is blue in one sentence",
    "hello world! how are you today?",
    "classify the sentiment: i love this movie",
    "translate 'good morning' into french",
] * 20


def make_tokenizer_folder(folder: str, vocab_size: int = 320) -> str:
    """A tiny byte-level BPE tokenizer (trained here) in Hugging Face format, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS, trainer)
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "pad_token": "<pad>",
                "chat_template": template,
            },
            f,
        )
    return folder


def make_hf_model(folder: str, arch: str = "llama", seed: int = 0, **overrides) -> str:
    """A tiny random LlamaForCausalLM / Qwen2ForCausalLM saved with save_pretrained + tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    kw = dict(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    kw.update(overrides)
    torch.manual_seed(seed)
    cfg_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[
        arch
    ]
    model = model_cls(cfg_cls(**kw)).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a mixed-up map shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    make_tokenizer_folder(folder, vocab_size=kw["vocab_size"])
    return folder


# Four instruction/response pairs for tiny training runs.
TINY_PAIRS = [
    {"instruction": "write a short poem about the sea", "input": "", "response": "the sea is blue and wide"},
    {"instruction": "sort these numbers", "input": "3, 1, 2", "response": "1, 2, 3"},
    {"instruction": "what is the capital of france?", "input": "", "response": "paris is the capital."},
    {"instruction": "classify the sentiment", "input": "i love this movie", "response": "positive"},
]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_when(procs, ready, timeout: float = 900) -> bool:
    """SIGKILLs the processes (each started in a session of its own) as soon as `ready()`.

    Returns:
      True once killed; False if they all ended before `ready()` held.
    """
    import signal
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            for p in procs:
                os.killpg(p.pid, signal.SIGKILL)
            for p in procs:
                p.wait()
            return True
        if all(p.poll() is not None for p in procs):
            return False
        time.sleep(0.05)
    raise TimeoutError("the run neither reached the kill point nor ended")


def assert_same_params(a: str, b: str) -> None:
    """The parameters of two checkpoints are bit-identical."""
    import jax
    import numpy as np

    from isheep_jax.model import checkpoint

    _, pa = checkpoint.load_model(a)
    _, pb = checkpoint.load_model(b)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), pa, pb)


def full_forward_logprobs(cfg, params, seqs: list[list[int]]) -> list:
    """Each sequence's next-token log-probabilities from one full forward, as numpy [len, V].

    The sequences run as one batch, right-padded to a multiple of 64 tokens: causal attention
    keeps the padding out of every real position, and the call compiles one program for its
    (model config, batch, width), where a forward per sequence would compile once per length.
    """
    import numpy as np

    width = -(-max(len(s) for s in seqs) // 64) * 64
    tokens = np.zeros((len(seqs), width), np.int32)
    for row, s in zip(tokens, seqs):
        row[: len(s)] = s
    logp = np.asarray(_log_softmax_forward()(cfg, params, tokens))
    return [logp[k, : len(s)] for k, s in enumerate(seqs)]


@functools.cache
def _log_softmax_forward():
    import jax

    from isheep_jax.model import params as P

    return jax.jit(lambda cfg, p, t: jax.nn.log_softmax(P.forward(cfg, p, t), axis=-1), static_argnums=0)
