"""GPU check of ModelConfig.attention_impl='cudnn' against our XLA attention (bf16 compute).

Loss and gradients of a random model on a packed batch with padding (two segments per row,
padded tail), in bf16 through each implementation and in f32 through ours as the reference;
exits 1 unless cuDNN's errors against the f32 reference are within 1.5x of our own bf16
path's (per gradient leaf, relative norm) and everything is finite. Needs an NVIDIA GPU (cuDNN);
CPU tests cover the
layouts and mask through the same API's XLA implementation.

    python benchmarks/check_cudnn_attention.py [--preset gin_configs/models/smollm2_135m.gin]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gin_configs/models/smollm2_135m.gin")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    args = ap.parse_args()

    import gin
    import jax
    import jax.numpy as jnp

    from isheep_jax.model.config import ModelConfig
    from isheep_jax.model.params import init_params
    from isheep_jax.parallel import sharding
    from isheep_jax.training.train_step import loss_sums

    gin.parse_config_file(args.preset)
    cfg = ModelConfig().replace(dtype="bfloat16")
    gin.clear_config()
    params = init_params(cfg, sharding.make_mesh())
    b, t = args.batch, args.seq
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (b, t + 1)).astype(np.int32)
    seg = np.zeros((b, t), np.int32)
    for r in range(b):  # two packed examples, then padding
        cut, end = t // 3 + 7 * r, t - 5 - 11 * r
        seg[r, :cut], seg[r, cut:end] = 1, 2
    pos = np.zeros_like(seg)
    for r in range(b):
        for s in (1, 2):
            idx = np.nonzero(seg[r] == s)[0]
            pos[r, idx] = np.arange(len(idx))
    batch = {
        "decoder_input_tokens": tokens[:, :-1],
        "decoder_target_tokens": tokens[:, 1:],
        "decoder_loss_weights": (seg != 0).astype(np.int32),
        "decoder_segment_ids": seg,
        "decoder_positions": pos,
    }

    def loss_and_grads(impl: str, dtype: str = "bfloat16"):
        c = cfg.replace(attention_impl=impl, dtype=dtype)
        f = jax.jit(jax.value_and_grad(lambda p: (lambda s, n: s / n)(*loss_sums(c, p, batch))))
        return f(params)

    def errors(grads, ref) -> list[float]:
        return [
            float(jnp.linalg.norm(a - r) / (jnp.linalg.norm(r) + 1e-12))
            for a, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref))
        ]

    (l_ref, g_ref), (l_x, g_x), (l_c, g_c) = (
        loss_and_grads("xla", "float32"),
        loss_and_grads("xla"),
        loss_and_grads("cudnn"),
    )
    e_x, e_c = errors(g_x, g_ref), errors(g_c, g_ref)
    ratio = max(c / max(x, 1e-6) for c, x in zip(e_c, e_x))
    finite = all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g_c)) and bool(jnp.isfinite(l_c))
    print(
        f"{jax.devices()[0].device_kind}: loss f32 {float(l_ref):.6f}, bf16 xla {float(l_x):.6f}, "
        f"bf16 cudnn {float(l_c):.6f}; worst gradient error vs f32: "
        f"xla {max(e_x):.2e}, cudnn {max(e_c):.2e}; "
        f"worst per-leaf ratio cudnn/xla {ratio:.2f}; finite: {finite}"
    )
    ok = (
        finite
        and abs(float(l_c) - float(l_ref)) <= 1.5 * abs(float(l_x) - float(l_ref)) + 1e-4 * abs(float(l_ref))
        and ratio < 1.5
    )
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
