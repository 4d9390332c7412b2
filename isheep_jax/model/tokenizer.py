"""Tokenizers and chat templates, without transformers at run time.

`tokenizer.json` (BPE: Qwen, Llama-3, SmolLM2) goes through Hugging Face `tokenizers`;
`tokenizer.model` (Llama-2) through `sentencepiece`. Ids match transformers' tokenizer
for the same folder (tested). Chat templates are the tokenizer's own Jinja template,
rendered with jinja2 the way transformers renders it; built-in templates only serve
models that carry none.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from typing import Any, Literal

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from isheep_jax.core import choices, io_utils

# Fallback templates for models without one ('raw' = no template: base models).
BUILTIN_TEMPLATES = {
    "chatml": (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
        "'<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
}

# How a user turn becomes a prompt: 'raw' (the text itself, for base models), 'chat' (the
# tokenizer's own template) or one of BUILTIN_TEMPLATES.
PromptStyle = Literal["raw", "chat", "chatml", "llama3"]
assert set(choices.values(PromptStyle)[2:]) == set(BUILTIN_TEMPLATES)


class TokenizerError(ValueError):
    """A tokenizer folder that cannot be loaded or used."""


def _token_str(v: Any) -> str | None:
    if isinstance(v, dict):  # older tokenizer_config.json: {"content": "<s>", ...}
        return v.get("content")
    return v


@functools.cache
def _jinja_env() -> ImmutableSandboxedEnvironment:
    def raise_exception(msg: str):
        raise jinja2.exceptions.TemplateError(msg)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(
        x, indent=indent, ensure_ascii=ensure_ascii
    )
    env.globals["raise_exception"] = raise_exception
    return env


class Tokenizer:
    """encode / decode / chat template for one tokenizer folder.

    Attributes:
      folder: the tokenizer folder.
      config: the parsed tokenizer_config.json ({} without one).
      chat_template: the tokenizer's Jinja chat template (chat_template.jinja, else
        tokenizer_config.json's `chat_template`, its 'default' one when named), or None.
    """

    def __init__(self, folder: str | os.PathLike):
        """Loads the tokenizer of `folder`: tokenizer.json if present, else tokenizer.model.

        Args:
          folder: a directory with tokenizer.json or tokenizer.model (and optionally
            tokenizer_config.json, chat_template.jinja).

        Raises:
          TokenizerError: the folder has neither file, or tokenizer.json cannot be loaded.
        """
        self.folder = str(folder)
        root = io_utils.as_path(self.folder)  # local or gs://: read through epath, parsed in memory
        cfg_path = root / "tokenizer_config.json"
        self.config: dict[str, Any] = io_utils.read_json(cfg_path) if cfg_path.exists() else {}
        json_path, sp_path = root / "tokenizer.json", root / "tokenizer.model"
        if json_path.exists():
            import tokenizers

            try:
                self._hf = tokenizers.Tokenizer.from_str(json_path.read_text())
            except Exception as e:  # tokenizers raises a bare Exception on bad files
                raise TokenizerError(f"{json_path}: cannot load: {e}") from e
            self._sp = None
        elif sp_path.exists():
            import sentencepiece as spm

            self._hf = None
            try:
                self._sp = spm.SentencePieceProcessor(model_proto=sp_path.read_bytes())
            except Exception as e:  # sentencepiece raises RuntimeError on bad files
                raise TokenizerError(f"{sp_path}: cannot load: {e}") from e
        else:
            raise TokenizerError(f"{self.folder}: no tokenizer.json or tokenizer.model")
        self.chat_template = self._load_chat_template()

    def _load_chat_template(self) -> str | None:
        path = io_utils.as_path(self.folder) / "chat_template.jinja"
        if path.exists():
            return path.read_text()
        t = self.config.get("chat_template")
        if isinstance(t, list):  # named templates: take the default one
            t = next((x["template"] for x in t if x.get("name") == "default"), None)
        return t

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        """The number of token ids (added tokens included for tokenizer.json)."""
        return self._hf.get_vocab_size() if self._hf else self._sp.get_piece_size()

    def token_to_id(self, token: str | None) -> int | None:
        """The id of a token string.

        Args:
          token: the token (piece) string, or None.

        Returns:
          Its id, or None for None and for a token the vocabulary does not have.
        """
        if token is None:
            return None
        if self._hf:
            return self._hf.token_to_id(token)
        i = self._sp.piece_to_id(token)
        return None if i == self._sp.unk_id() and token != self._sp.id_to_piece(i) else i

    def special(self, name: str) -> str | None:
        """The special token string for 'bos' / 'eos' / 'pad' / 'unk' from tokenizer_config.json.

        A SentencePiece tokenizer falls back to its model's own special ids.

        Args:
          name: 'bos', 'eos', 'pad' or 'unk'.

        Returns:
          The token string, or None where there is none.
        """
        tok = _token_str(self.config.get(f"{name}_token"))
        if tok is None and self._sp is not None:
            i = {
                "bos": self._sp.bos_id(),
                "eos": self._sp.eos_id(),
                "unk": self._sp.unk_id(),
                "pad": self._sp.pad_id(),
            }[name]
            tok = self._sp.id_to_piece(i) if i >= 0 else None
        return tok

    @property
    def bos_id(self) -> int | None:
        """The beginning-of-sequence id, or None."""
        return self.token_to_id(self.special("bos"))

    @property
    def eos_id(self) -> int | None:
        """The end-of-sequence id, or None."""
        return self.token_to_id(self.special("eos"))

    @property
    def pad_id(self) -> int:
        """The padding id; without one, the end-of-sequence id, else 0."""
        pad = self.token_to_id(self.special("pad"))
        return pad if pad is not None else (self.eos_id or 0)

    # ------------------------------------------------------------------ text
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of a text.

        Args:
          text: the text.
          add_special_tokens: add the tokenizer's special tokens (tokenizer.json: its
            post-processor; SentencePiece: BOS unless `add_bos_token` is false, EOS where
            `add_eos_token` is true in tokenizer_config.json).

        Returns:
          The ids.
        """
        if self._hf:
            return self._hf.encode(text, add_special_tokens=add_special_tokens).ids
        ids = self._sp.encode(text)
        if add_special_tokens and self.config.get("add_bos_token", True) and self._sp.bos_id() >= 0:
            ids = [self._sp.bos_id()] + ids
        if add_special_tokens and self.config.get("add_eos_token", False) and self._sp.eos_id() >= 0:
            ids = ids + [self._sp.eos_id()]
        return ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """`encode` of several texts.

        Args:
          texts: the texts.
          add_special_tokens: as in `encode`.

        Returns:
          One id list per text, in order.
        """
        if self._hf:
            return [e.ids for e in self._hf.encode_batch(list(texts), add_special_tokens=add_special_tokens)]
        return [self.encode(t, add_special_tokens) for t in texts]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of token ids.

        Args:
          ids: the ids (any integer type).
          skip_special_tokens: leave special (SentencePiece: control) tokens out.

        Returns:
          The text.
        """
        ids = [int(i) for i in ids]
        if self._hf:
            return self._hf.decode(ids, skip_special_tokens=skip_special_tokens)
        if skip_special_tokens:
            ids = [i for i in ids if not self._sp.is_control(i)]
        return self._sp.decode(ids)

    # ------------------------------------------------------------------ chat
    def apply_chat_template(
        self,
        messages: Sequence[dict[str, str]],
        add_generation_prompt: bool = True,
        template: str | None = None,
    ) -> str:
        """Renders messages with `template` (a builtin name or Jinja text) or the tokenizer's own.

        The template sees `messages`, `add_generation_prompt` and the special tokens
        (`bos_token`, `eos_token`, `pad_token`, `unk_token`), rendered in a sandbox.

        Args:
          messages: the conversation, dicts with 'role' and 'content'.
          add_generation_prompt: end with the header of an assistant turn.
          template: a key of `BUILTIN_TEMPLATES`, or Jinja text (default: the tokenizer's own).

        Returns:
          The rendered text.

        Raises:
          TokenizerError: no template is given and the tokenizer has none.
          jinja2.exceptions.TemplateError: the template fails or calls `raise_exception`.
        """
        source = BUILTIN_TEMPLATES.get(template, template) if template else self.chat_template
        if source is None:
            raise TokenizerError(
                f"{self.folder}: the tokenizer has no chat template; pass one of "
                f"{sorted(BUILTIN_TEMPLATES)} or use raw prompts"
            )
        specials = {f"{n}_token": self.special(n) for n in ("bos", "eos", "pad", "unk")}
        return (
            _jinja_env()
            .from_string(source)
            .render(messages=list(messages), add_generation_prompt=add_generation_prompt, **specials)
        )

    def render_prompt(self, user_text: str, style: PromptStyle, system: str | None = None) -> str:
        """One user turn as a prompt.

        Args:
          user_text: the user's message.
          style: 'raw' (base models: the text itself), 'chat' (the tokenizer's own template)
            or a builtin template ('chatml', 'llama3').
          system: an optional system message (chat styles only).

        Returns:
          The prompt text, ending where the assistant's answer begins.

        Raises:
          ValueError: `style` is not a `PromptStyle`.
          TokenizerError: style 'chat' for a tokenizer without a chat template.
        """
        choices.check("prompt", "style", style, PromptStyle)
        if style == "raw":
            return user_text
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user_text}
        ]
        return self.apply_chat_template(messages, template=None if style == "chat" else style)

    def user_turn_prefix(self, style: PromptStyle, system: str | None = None) -> str:
        """The chat template's text up to where a user's message begins (Magpie's prompt).

        An aligned chat model given only this continues with a plausible user message and
        ends the turn with its end-of-turn token (Xu et al. 2024, "Magpie").

        Args:
          style: 'chat' (the tokenizer's own template) or a builtin template; not 'raw'.
          system: an optional system message, rendered before the user turn.

        Returns:
          The rendered conversation of one user turn, cut right before its content.

        Raises:
          ValueError: `style` is 'raw' or not a `PromptStyle`.
          TokenizerError: the template has no chat template, or renders the user's content
            other than verbatim after a fixed prefix (the prefix cannot be cut out).
        """
        choices.check("prompt", "style", style, PromptStyle)
        if style == "raw":
            raise ValueError("a user-turn prefix needs a chat template: style 'raw' has none")
        # A sentinel no template alters: the prefix is what precedes it, for any user text.
        marker = "\ue000isheep-user-content\ue000"
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": marker}
        ]
        text = self.apply_chat_template(
            messages, add_generation_prompt=False, template=None if style == "chat" else style
        )
        if text.count(marker) != 1:
            raise TokenizerError(
                f"{self.folder}: the {style!r} template does not render the user's message "
                "verbatim, so its user-turn prefix cannot be cut out"
            )
        return text[: text.index(marker)]
