"""Sampling, in four layers from the bottom up.

`token_choice`: one token per row from a step's logits (greedy, temperature, top-k, top-p).
`decode_loop`: the jitted prefill and `lax.while_loop` decode of one padded batch.
`generator`: the user-facing batch driver `Generator` (tokenising, batching, bucketing, text).
`chunked`: resumable sampling of a stage's prompts in chunk files.
"""
