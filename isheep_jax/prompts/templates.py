"""Editable prompt templates: load them from the package or a user's file, render them.

Templates use `string.Template` syntax (`$name` or `${name}`; write `$$` for a literal
dollar sign). `$`-placeholders are chosen over `str.format` braces because prompts quote
code and JSON, which are full of braces.

Shipped templates live in `isheep_jax/prompts/<name>.txt`. One trailing newline at the
end of a file is dropped when loading, so an editor adding one does not change the prompt
(a prompt that should end on a newline ends its file with an empty line).
"""

from __future__ import annotations

import importlib.resources
import os
from string import Template

from isheep_jax.core import io_utils

# Placeholders each shipped prompt needs; a user's replacement file is checked against
# the same set so a typo fails at load time, not as a silently broken prompt.
REQUIRED_PLACEHOLDERS: dict[str, frozenset[str]] = {
    "instruction_synthesis": frozenset({"demos", "next_index"}),
    "rate_quality": frozenset({"response"}),
    "rate_following": frozenset({"response"}),
}

# Placeholders the code fills for each template; anything else in a file is an error.
AVAILABLE_PLACEHOLDERS: dict[str, frozenset[str]] = {
    "instruction_synthesis": frozenset({"demos", "next_index", "num_tasks"}),
    "rate_quality": frozenset({"task", "instruction", "input", "response"}),
    "rate_following": frozenset({"task", "instruction", "input", "response"}),
}


class PromptTemplateError(ValueError):
    """A template file or a rendering call is malformed."""


def load_template(name: str, path: str | os.PathLike[str] | None = None) -> Template:
    """Returns template `name`, read from `path` if given, else the shipped file.

    `name` is any `<name>.txt` shipped with the package. For the names in
    `REQUIRED_PLACEHOLDERS` the placeholders are checked: all required ones present, none
    unknown; other names (or your own name with a `path`) are loaded unchecked.

    Args:
      name: the template's name, e.g. "rate_quality".
      path: a user's template file (UTF-8) to read instead of the shipped one.

    Returns:
      The template, without one trailing newline of the file.

    Raises:
      PromptTemplateError: no shipped template has that name, a `$` is not a valid
        placeholder, or a checked template lacks or adds placeholders.
      OSError: `path` cannot be read.
    """
    if path is None:
        folder = importlib.resources.files("isheep_jax.prompts")
        resource = folder / f"{name}.txt"
        if not resource.is_file():
            shipped = sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".txt"))
            raise PromptTemplateError(f"unknown template {name!r}; shipped templates: {shipped}")
        text, where = resource.read_text(encoding="utf-8"), f"<shipped {name}.txt>"
    else:
        p = io_utils.as_path(path)
        if not p.exists():
            raise PromptTemplateError(f"{os.fspath(path)}: no such template file")
        text, where = p.read_text(encoding="utf-8"), os.fspath(path)
    if text.endswith("\n"):
        text = text[:-1]
    template = Template(text)
    if not template.is_valid():
        raise PromptTemplateError(f"{where}: invalid '$' placeholder (write '$$' for a literal dollar sign)")
    found = set(template.get_identifiers())
    if name in REQUIRED_PLACEHOLDERS:
        missing = REQUIRED_PLACEHOLDERS[name] - found
        unknown = found - AVAILABLE_PLACEHOLDERS[name]
        if missing:
            raise PromptTemplateError(f"{where}: template {name!r} lacks ${', $'.join(sorted(missing))}")
        if unknown:
            raise PromptTemplateError(
                f"{where}: template {name!r} uses unknown ${', $'.join(sorted(unknown))}; "
                f"available: {sorted(AVAILABLE_PLACEHOLDERS[name])}"
            )
    return template


def render(template: Template | str, **values: object) -> str:
    """Substitutes `values` into `template` (a Template or its source text).

    Values are inserted verbatim: a `$` inside an instruction or response is not
    re-interpreted.

    Args:
      template: the template, or its source text.
      **values: placeholder name -> value (converted with `str`).

    Returns:
      The rendered text.

    Raises:
      PromptTemplateError: a placeholder has no value, or the template holds an invalid `$`.
    """
    if isinstance(template, str):
        template = Template(template)
    try:
        return template.substitute({k: str(v) for k, v in values.items()})
    except KeyError as e:
        raise PromptTemplateError(
            f"template needs ${e.args[0]}, which is not provided (given: {sorted(values)})"
        ) from None
    except ValueError as e:
        raise PromptTemplateError(f"invalid template: {e} (write '$$' for a literal dollar sign)") from None


def user_text(instruction: str, input_text: str = "") -> str:
    """The user turn of a pair: the instruction, then its input (if any) after a blank line.

    The loop's response stage, training, evaluation and the data export all use this, so
    the model is trained on the prompts it is sampled with.

    Args:
      instruction: the task.
      input_text: the task's input; '' for none.

    Returns:
      The text of the user turn.
    """
    return f"{instruction}\n\n{input_text}" if input_text else instruction
