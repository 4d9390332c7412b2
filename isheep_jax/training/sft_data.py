"""SFT data as SeqIO: one Task per (run, iteration) over its kept pairs, a causal-LM feature
converter with response-only loss weights and optional packing, and a loader that turns a
Task or Mixture into fixed-shape numpy arrays for the trainer.

Example layout (one pair, unpacked, length 8):

    tokens                 = [p0 p1 p2 r0 r1 EOS]          prompt p*, response r*
    decoder_input_tokens   = [p0 p1 p2 r0 r1  0  0  0]
    decoder_target_tokens  = [p1 p2 r0 r1 EOS 0  0  0]
    decoder_loss_weights   = [ 0  0  1  1  1  0  0  0]      predicts r0, r1, EOS only
    decoder_segment_ids    = [ 1  1  1  1  1  0  0  0]
    decoder_positions      = [ 0  1  2  3  4  0  0  0]

Unlike seqio's `PrefixLMFeatureConverter`, inputs are not shifted right behind a 0 token:
the model sees exactly the token sequence the sampler feeds it at generation time.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

from isheep_jax.core import io_utils
from isheep_jax.core.native_logs import quiet_import
from isheep_jax.model.tokenizer import Tokenizer
from isheep_jax.prompts.templates import user_text
from isheep_jax.training.vocab import vocabulary_for

tf = quiet_import("tensorflow")  # before seqio imports it: its C++ start-up lines are noise
import seqio  # noqa: E402

MODEL_KEYS = (
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
    "decoder_segment_ids",
    "decoder_positions",
)


def _chat_row(messages: object, where: str) -> dict[str, str]:
    """A one-turn chat (`messages`: optional system, user, assistant) as a pair row."""
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ):
        raise io_utils.DataError(f"{where}: 'messages' must be a list of {{role, content}} string objects")
    roles = [m["role"] for m in messages]
    system = ""
    if roles[:1] == ["system"]:
        system, messages, roles = messages[0]["content"], messages[1:], roles[1:]
    if roles != ["user", "assistant"]:
        raise io_utils.DataError(
            f"{where}: 'messages' must be one user turn then one assistant turn (after an optional "
            f"system message), got roles {roles}; multi-turn conversations are not supported"
        )
    return {"instruction": messages[0]["content"], "response": messages[1]["content"], "system": system}


def read_pairs(paths: Sequence[str | os.PathLike]) -> dict[str, list[str]]:
    """Columns instruction / input / response / system from pair JSONL files, validated.

    A row is a pair (`instruction`, optional `input`, `response`; the loop's kept pairs), an
    Alpaca row (its response is called `output`), or a one-turn chat: `messages` = an
    optional system message, one user and one assistant message. A missing or null `input`
    or system reads as ''.

    Args:
      paths: the JSONL files, read in order.

    Returns:
      {"instruction": [...], "input": [...], "response": [...], "system": [...]}, one entry
      per row.

    Raises:
      DataError: a row is not an object, has no non-blank `instruction` or response, has a
        non-string `input`, or holds `messages` that are not one user and one assistant turn
        (the message names file and line).
    """
    cols: dict[str, list[str]] = {"instruction": [], "input": [], "response": [], "system": []}
    for path in paths:
        for lineno, row in io_utils.iter_jsonl(path):
            where = f"{path}:{lineno}"
            if not isinstance(row, dict):
                raise io_utils.DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            if "messages" in row:
                row = _chat_row(row["messages"], where)
            elif "response" not in row and "output" in row:  # Alpaca format names the response 'output'
                row = {**row, "response": row["output"]}
            for key in ("instruction", "response"):
                if not isinstance(row.get(key), str) or not row[key].strip():
                    raise io_utils.DataError(f"{where}: missing or empty string field {key!r}")
            inp = row.get("input", "") or ""
            if not isinstance(inp, str):
                raise io_utils.DataError(f"{where}: field 'input' must be a string")
            cols["instruction"].append(row["instruction"])
            cols["input"].append(inp)
            cols["response"].append(row["response"])
            cols["system"].append(row.get("system", "") or "")
    return cols


# ---------------------------------------------------------------------------- preprocessors
def render_prompts(ds: tf.data.Dataset, tokenizer_dir: str, prompt_style: str) -> tf.data.Dataset:
    """{instruction, input, response[, system]} -> {inputs: rendered prompt, targets: response}.

    prompt_style 'raw' (base models: the user text itself), 'chat' (the tokenizer's own
    template) or a builtin template name; the same rendering the sampler's prompts get.

    Args:
      ds: examples with scalar string features `instruction`, `input`, `response` and
        optionally `system` (a system message; '' for none).
      tokenizer_dir: the tokenizer folder whose templates render the prompts.
      prompt_style: see above; a bad style raises here, not inside tf.data.

    Returns:
      The mapped dataset with scalar string features `inputs` and `targets`.
    """
    tok = Tokenizer(tokenizer_dir)
    tok.render_prompt("x", prompt_style)  # fail here, not inside tf.data, on a bad style

    def render(instruction, inp, system) -> bytes:
        instruction, inp, system = (
            (x.item() if isinstance(x, np.ndarray) else x).decode() for x in (instruction, inp, system)
        )
        return tok.render_prompt(user_text(instruction, inp), prompt_style, system=system or None).encode()

    def fn(ex):
        system = ex.get("system", tf.constant(""))
        prompt = tf.numpy_function(
            render, [ex["instruction"], ex["input"], system], tf.string, stateful=False
        )
        prompt.set_shape([])
        return {"inputs": prompt, "targets": ex["response"]}

    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def prepend_bos(ds: tf.data.Dataset, bos_id: int | None) -> tf.data.Dataset:
    """Puts BOS before the prompt ids (raw prompts of tokenizers that add BOS on encode).

    Args:
      ds: tokenized examples with int32 `inputs` [prompt_length].
      bos_id: the id to prepend; None leaves `ds` as it is.

    Returns:
      The dataset with `inputs` [prompt_length + 1] (or `ds` itself).
    """
    if bos_id is None:
        return ds
    return ds.map(
        lambda ex: {**ex, "inputs": tf.concat([[bos_id], ex["inputs"]], 0)},
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def tokenizer_adds_bos(tokenizer_dir: str, prompt_style: str) -> int | None:
    """BOS id to prepend: only for raw prompts of a tokenizer that adds BOS (chat templates carry
    their own).

    Args:
      tokenizer_dir: the tokenizer folder.
      prompt_style: how prompts are rendered; only 'raw' can need a BOS.

    Returns:
      The BOS id when `prompt_style` is 'raw' and the tokenizer puts BOS first on encode,
      else None.
    """
    if prompt_style != "raw":
        return None
    tok = Tokenizer(tokenizer_dir)
    return tok.bos_id if tok.bos_id is not None and tok.encode("a")[:1] == [tok.bos_id] else None


# ---------------------------------------------------------------------------- tasks
def task_name(run_name: str, iteration: int) -> str:
    """seqio names allow [A-Za-z0-9_.:]; run-name characters outside [A-Za-z0-9_] become '_'.

    Args:
      run_name: the run's name (its directory name).
      iteration: the loop iteration the task's pairs come from.

    Returns:
      "isheep_<run name>_iter<iteration>".
    """
    return f"isheep_{re.sub(r'[^A-Za-z0-9_]', '_', run_name)}_iter{iteration}"


def register_sft_task(
    name: str, pair_files: Sequence[str | os.PathLike], tokenizer_dir: str | os.PathLike, prompt_style: str
) -> seqio.Task:
    """Registers (or replaces) a SeqIO Task over kept-pair JSONL files; split 'train'.

    The pairs are read into memory now; the task renders prompts in `prompt_style`,
    tokenizes, prepends BOS where the tokenizer would (`tokenizer_adds_bos`) and appends EOS
    to the targets.

    Args:
      name: the task name (`task_name`).
      pair_files: JSONL files of pairs (`read_pairs`).
      tokenizer_dir: the tokenizer folder of the model to train.
      prompt_style: 'raw', 'chat' or a builtin template name (`render_prompts`).

    Returns:
      The registered task, with output features `inputs` (no EOS) and `targets` (EOS).

    Raises:
      DataError: the files hold no pair, or a row is malformed.
    """
    cols = read_pairs(pair_files)
    if not cols["instruction"]:
        raise io_utils.DataError(f"task {name}: no pairs in {[os.fspath(p) for p in pair_files]}")
    if prompt_style == "raw" and any(cols["system"]):
        raise io_utils.DataError(
            f"task {name}: the data holds system messages, which raw prompts cannot carry; "
            "use a chat prompt style"
        )
    tokenizer_dir = os.fspath(tokenizer_dir)
    vocab = vocabulary_for(tokenizer_dir)

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del split, shuffle_files, seed  # one in-memory split; shuffling is the trainer's job
        return tf.data.Dataset.from_tensor_slices({k: tf.constant(v, tf.string) for k, v in cols.items()})

    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            dataset_fn, splits=["train"], num_input_examples={"train": len(cols["response"])}
        ),
        preprocessors=[
            functools.partial(render_prompts, tokenizer_dir=tokenizer_dir, prompt_style=prompt_style),
            seqio.preprocessors.tokenize,
            functools.partial(prepend_bos, bos_id=tokenizer_adds_bos(tokenizer_dir, prompt_style)),
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features={
            "inputs": seqio.Feature(vocab, add_eos=False),
            "targets": seqio.Feature(vocab, add_eos=True),
        },
    )


def register_mixture(name: str, task_names: Sequence[str]) -> seqio.Mixture:
    """A Mixture of iteration tasks (cumulative data); `load_examples` reads each task once.

    Registers (or replaces) the mixture, every task at rate 1.

    Args:
      name: the mixture name.
      task_names: registered tasks, e.g. one per iteration.

    Returns:
      The registered mixture.
    """
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    return seqio.MixtureRegistry.add(name, [(t, 1.0) for t in task_names])


# ---------------------------------------------------------------------------- feature converter
class CausalLMFeatureConverter(seqio.FeatureConverter):
    """{inputs, targets} -> decoder features of one causal sequence, loss on targets only.

    The model length is inputs + targets; an example of `a` prompt and `b` target tokens
    fills a + b - 1 positions (the last token is only ever a target). With `pack`, several
    examples share a row, told apart by segment id; otherwise each row holds one example
    and is padded.

    Each output feature (`MODEL_KEYS`) is int32 [length]: inputs, next-token targets, loss
    weights (1 where the target is a response token), segment ids (0 marks padding) and
    positions within the segment.
    """

    TASK_FEATURES = {
        "inputs": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
    }
    # Segment ids and positions are model features packed or not: the trainer always
    # masks attention by segment, so both layouts feed the same train step.
    MODEL_FEATURES = {k: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32) for k in MODEL_KEYS}
    PACKING_FEATURE_DTYPES: Mapping[str, tf.dtypes.DType] = {}

    def _convert_features(
        self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
    ) -> tf.data.Dataset:
        length = self.get_model_feature_lengths(task_feature_lengths)["decoder_target_tokens"]

        def split(ex):
            tokens = tf.concat([ex["inputs"], ex["targets"]], 0)
            n_in = tf.size(ex["inputs"])
            weights = tf.cast(tf.range(1, tf.size(tokens)) >= n_in, tf.int32)
            return {"inp": tokens[:-1], "tgt": tokens[1:], "w": weights}

        ds = ds.map(split, num_parallel_calls=tf.data.AUTOTUNE)
        lengths = {"inp": length, "tgt": length, "w": length}
        if self.pack:
            # seqio's packer takes 0 for padding (it counts non-zeros), but 0 is a real token
            # in Hugging Face vocabularies and a real loss weight: pack values + 1, then undo.
            ds = ds.map(lambda ex: {k: v + 1 for k, v in ex.items()})
            ds = seqio.utils.trim_and_pack_dataset(ds, lengths)

            def unshift(ex):
                real = tf.cast(ex["inp_segment_ids"] > 0, tf.int32)
                return {
                    "decoder_input_tokens": (ex["inp"] - 1) * real,
                    "decoder_target_tokens": (ex["tgt"] - 1) * real,
                    "decoder_loss_weights": (ex["w"] - 1) * real,
                    "decoder_segment_ids": ex["inp_segment_ids"],
                    "decoder_positions": ex["inp_positions"],
                }

            return ds.map(unshift)
        ds = ds.map(lambda ex: {**ex, "seg": tf.ones_like(ex["inp"])})
        ds = seqio.utils.trim_and_pad_dataset(ds, {**lengths, "seg": length})
        return ds.map(
            lambda ex: {
                "decoder_input_tokens": ex["inp"],
                "decoder_target_tokens": ex["tgt"],
                "decoder_loss_weights": ex["w"],
                "decoder_segment_ids": ex["seg"],
                "decoder_positions": tf.range(length, dtype=tf.int32) * ex["seg"],
            }
        )

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
        """Every model feature has length inputs + targets.

        Args:
          task_feature_lengths: {"inputs": prompt budget, "targets": response budget}.

        Returns:
          `MODEL_KEYS` -> the sum of the two budgets.
        """
        length = task_feature_lengths["inputs"] + task_feature_lengths["targets"]
        return {k: length for k in MODEL_KEYS}


@dataclasses.dataclass(frozen=True)
class SFTArrays:
    """Converted examples as int32 arrays [rows, length] keyed by MODEL_KEYS, plus counts.

    Attributes:
      arrays: `MODEL_KEYS` -> int32 [rows, length] numpy arrays.
      num_examples: pairs read from the task(s).
      num_too_long: pairs left out: prompt or response + EOS longer than its budget.
    """

    arrays: dict[str, np.ndarray]
    num_examples: int  # pairs read from the task(s)
    num_too_long: int  # pairs left out: prompt or response + EOS longer than its budget

    @property
    def num_rows(self) -> int:
        """Number of rows (packed rows may hold several examples)."""
        return len(self.arrays["decoder_target_tokens"])

    @property
    def length(self) -> int:
        """Row length in tokens."""
        return self.arrays["decoder_target_tokens"].shape[1]

    @property
    def num_target_tokens(self) -> int:
        """Number of tokens with loss weight 1."""
        return int(self.arrays["decoder_loss_weights"].sum())


def load_examples(name: str, max_prompt_len: int, max_response_len: int, pack: bool = False) -> SFTArrays:
    """Every example of a Task (or each task of a Mixture, once, in order) converted to arrays.

    Pairs that do not fit are left out and counted rather than cut: a truncated prompt
    would teach an answer to a question never asked, a truncated response an early stop.

    Args:
      name: a registered task or mixture.
      max_prompt_len: the longest prompt an example may have, in tokens (BOS included).
      max_response_len: the longest response an example may have, in tokens (EOS included).
      pack: pack several examples per row (`CausalLMFeatureConverter`).

    Returns:
      The examples as `SFTArrays` of int32 [rows, max_prompt_len + max_response_len].

    Raises:
      DataError: no pair fits the budgets.
    """
    provider = seqio.get_mixture_or_task(name)
    tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
    kept, total = [], 0
    for task in tasks:
        ds = task.get_dataset(
            sequence_length=None,
            split="train",
            shuffle=False,
            num_epochs=1,
            trim_output_features=False,
            use_cached=False,
        )
        for ex in ds.as_numpy_iterator():
            total += 1
            if len(ex["inputs"]) <= max_prompt_len and len(ex["targets"]) <= max_response_len:
                kept.append((ex["inputs"], ex["targets"]))
    if not kept:
        raise io_utils.DataError(
            f"{name}: none of {total} pairs fits prompt <= {max_prompt_len} and "
            f"response + EOS <= {max_response_len} tokens"
        )
    spec = tf.TensorSpec([None], tf.int32)
    ds = tf.data.Dataset.from_generator(
        lambda: ({"inputs": a, "targets": b} for a, b in kept),
        output_signature={"inputs": spec, "targets": spec},
    )
    lengths = {"inputs": max_prompt_len, "targets": max_response_len}
    rows = list(CausalLMFeatureConverter(pack=pack)(ds, lengths).as_numpy_iterator())
    arrays = {k: np.stack([r[k] for r in rows]).astype(np.int32) for k in MODEL_KEYS}
    return SFTArrays(arrays, num_examples=total, num_too_long=total - len(kept))
