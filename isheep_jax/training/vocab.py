"""SeqIO vocabularies for our tokenizer folders.

SentencePiece models (`tokenizer.model`, Llama-2 style) use `seqio.SentencePieceVocabulary`
as is. BPE models (Qwen, Llama-3, SmolLM2: `tokenizer.json`) get `HfTokenizersVocabulary`,
a `seqio.Vocabulary` over Hugging Face `tokenizers` whose ids are exactly those of
`isheep_jax.model.tokenizer.Tokenizer` (and therefore of transformers' tokenizer). Neither adds
BOS/EOS on encode: SeqIO appends EOS to targets itself, and the SFT preprocessors add BOS
where the model's own tokenizer would.
"""

from __future__ import annotations

import os

import numpy as np

from isheep_jax.core import io_utils
from isheep_jax.core.native_logs import quiet_import
from isheep_jax.model.tokenizer import Tokenizer

tf = quiet_import("tensorflow")  # before seqio imports it: its C++ start-up lines are noise
import seqio  # noqa: E402


def _as_bytes(b) -> bytes:
    return b.item() if isinstance(b, np.ndarray) else b


class HfTokenizersVocabulary(seqio.Vocabulary):
    """`seqio.Vocabulary` over a Hugging Face `tokenizer.json` folder; pickles as its path.

    Ids are those of `isheep_jax.model.tokenizer.Tokenizer` over the same folder; encoding adds no
    BOS/EOS (see the module docstring).

    Args:
      tokenizer_dir: folder holding `tokenizer.json`. The tokenizer itself is loaded on first
        use (`tokenizer`), also after unpickling.
    """

    def __init__(self, tokenizer_dir: str | os.PathLike):
        self._dir = os.fspath(tokenizer_dir)
        self._tok: Tokenizer | None = None
        super().__init__(extra_ids=0)

    @property
    def tokenizer(self) -> Tokenizer:
        """The wrapped `Tokenizer`, loaded on first access."""
        if self._tok is None:
            self._tok = Tokenizer(self._dir)
        return self._tok

    def __getstate__(self) -> dict:
        """Pickled state: the folder path (and extra ids), not the loaded tokenizer."""
        return {"_dir": self._dir, "_tok": None, "_extra_ids": self._extra_ids}

    @property
    def eos_id(self) -> int | None:
        """The tokenizer's EOS id, or None if it has none."""
        return self.tokenizer.eos_id

    @property
    def bos_id(self) -> int | None:
        """The tokenizer's BOS id, or None if it has none."""
        return self.tokenizer.bos_id

    @property
    def unk_id(self) -> int | None:
        """The id of the tokenizer's unknown token, or None if it has none."""
        return self.tokenizer.token_to_id(self.tokenizer.special("unk"))

    @property
    def _base_vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def _encode(self, s: str) -> list[int]:
        return self.tokenizer.encode(s, add_special_tokens=False)

    def _decode(self, ids) -> str:
        # Special tokens are kept so that decode(encode(text)) == text for any text.
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        """Scalar string -> int32 ids [length] (a py-function: fine for in-process input pipelines)."""
        if s.shape.rank != 0:
            raise ValueError(
                f"HfTokenizersVocabulary.encode_tf takes a scalar string, got rank {s.shape.rank}"
            )

        def enc(b) -> np.ndarray:  # bytes in graph mode, a 0-d object array in eager mode
            return np.asarray(self._encode(_as_bytes(b).decode("utf-8")), np.int32)

        ids = tf.numpy_function(enc, [s], tf.int32, stateful=False)
        ids.set_shape([None])
        return ids

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        def dec(a: np.ndarray) -> bytes:
            return self._decode(a.tolist()).encode("utf-8")

        text = tf.numpy_function(dec, [ids], tf.string, stateful=False)
        text.set_shape([])
        return text

    def __eq__(self, other) -> bool:
        """Equal to another `HfTokenizersVocabulary` over the same folder (as an absolute path)."""
        return isinstance(other, HfTokenizersVocabulary) and str(io_utils.absolute(other._dir)) == str(
            io_utils.absolute(self._dir)
        )

    def __hash__(self) -> int:
        """Hash of the folder's absolute path, consistent with `__eq__`."""
        return hash(str(io_utils.absolute(self._dir)))

    def __str__(self) -> str:
        """The folder and the vocabulary size."""
        return f"HfTokenizersVocabulary(dir={self._dir}, size={self.vocab_size})"


def vocabulary_for(tokenizer_dir: str | os.PathLike) -> seqio.Vocabulary:
    """The SeqIO vocabulary of a tokenizer folder: tokenizer.json wins over tokenizer.model.

    Args:
      tokenizer_dir: folder holding `tokenizer.json` (BPE) and/or `tokenizer.model`
        (SentencePiece).

    Returns:
      An `HfTokenizersVocabulary` when `tokenizer.json` exists, else a
      `seqio.SentencePieceVocabulary` over `tokenizer.model`.

    Raises:
      FileNotFoundError: the folder holds neither file.
    """
    d = os.fspath(tokenizer_dir)
    root = io_utils.as_path(d)
    if (root / "tokenizer.json").exists():
        return HfTokenizersVocabulary(d)
    if (root / "tokenizer.model").exists():
        return seqio.SentencePieceVocabulary(str(root / "tokenizer.model"))  # tf.io.gfile: gs:// too
    raise FileNotFoundError(f"{d}: neither tokenizer.json nor tokenizer.model found")
