"""`isheep export-data`: a run's synthetic data as a Hugging Face `datasets` Parquet folder.

Layout (one config per kind of row, one split per iteration, 0-based as RUN/iter_<i>)::

    OUT/README.md                     dataset card; its YAML declares configs and splits
    OUT/kept/iteration_<i>-00000-of-00001-<sha>.parquet     pairs that survived every filter
    OUT/dropped/iteration_<i>-...parquet      rows dropped at any stage, with stage and reason
    OUT/scored/iteration_<i>-...parquet       every rated pair, with the judge scores
    OUT/preferences/iteration_<i>-...parquet  (--preferences) chosen / rejected pairs
    OUT/.isheep_export.json           marks the folder as ours, lists its files

`datasets.load_dataset(OUT, "kept")` gives one split per iteration;
`datasets.load_dataset("parquet", data_dir=OUT/kept)` one `train` split of all of them.
<sha> is the file's content hash: `datasets` keys its cache of a local folder by the
folder's name and the card's file names only, so fixed names would let a re-export (or
another run exported to a folder of the same name) load the old, cached rows.

An iteration is exported once its filter stage is done (its data no longer changes; its
training may still run). `datasets` cannot load an empty Parquet split, so a split with no
row is left out, and the card says so. The folder is built beside OUT and renamed into
place at the end: a killed export leaves only a hidden temporary sibling, never a
half-written OUT.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from isheep_jax.core import io_utils
from isheep_jax.loop.run_dir import IterationPaths, RunDir, RunError
from isheep_jax.model import checkpoint
from isheep_jax.prompts.templates import user_text

log = logging.getLogger(__name__)

MARKER = ".isheep_export.json"  # names the folder as an export of ours, with its files
KINDS = ("kept", "dropped", "scored")
PREFERENCES = "preferences"
_TMP_PREFIX = ".isheep-export-tmp-"  # the temporary sibling: .<OUT name>.isheep-export-tmp-<hex>
_OLD_PREFIX = ".isheep-export-old-"  # the previous export, moved aside during the swap


class ExportError(ValueError):
    """The export cannot be written as asked (OUT holds other files, nothing to export, ...)."""


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow comes with the hf extra
        raise ExportError(
            "isheep export-data writes Parquet with pyarrow: pip install 'isheep_jax[hf]'"
        ) from None
    return pa, pq


# ------------------------------------------------------------------------------ schema
def _schemas() -> dict[str, Any]:
    """The columns of each config, fixed whatever the run's settings (absent = null)."""
    pa, _ = _pa()
    text = [
        ("id", pa.string()),
        ("iteration", pa.int32()),
        ("model", pa.string()),
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("response", pa.string()),
        ("finish_reason", pa.string()),
    ]
    # Logits mode stores the expected score, the mode, the probability mass and the 10
    # probabilities; text mode the parsed score and the judge's reply.
    scores = []
    for kind in ("quality", "following"):
        scores += [
            (f"{kind}_score", pa.float64()),
            (f"{kind}_reason", pa.string()),
            (f"{kind}_mode_score", pa.int32()),
            (f"{kind}_score_mass", pa.float64()),
            (f"{kind}_probs", pa.list_(pa.float64())),
            (f"{kind}_rating", pa.string()),
        ]
    drop = [("stage", pa.string()), ("reason", pa.string()), ("contaminated_by", pa.string())]
    preference = [
        ("iteration", pa.int32()),
        ("model", pa.string()),
        ("prompt", pa.string()),
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("score_chosen", pa.float64()),
        ("score_rejected", pa.float64()),
        ("chosen_id", pa.string()),
        ("rejected_id", pa.string()),
    ]
    return {
        "kept": pa.schema(text + scores),
        "dropped": pa.schema(text + drop + scores),
        "scored": pa.schema(text + [("kept", pa.bool_())] + drop + scores),
        PREFERENCES: pa.schema(preference),
    }


def _cell(value: Any, type_) -> Any:
    """A JSON value as the column's type wants it (ids may be numbers, scores ints)."""
    pa, _ = _pa()
    if value is None:
        return None
    if pa.types.is_string(type_):
        return str(value)
    if pa.types.is_integer(type_):
        return int(value)
    if pa.types.is_floating(type_):
        return float(value)
    if pa.types.is_list(type_):
        return [float(v) for v in value]
    return value


def _table(rows: Sequence[dict], schema):
    pa, _ = _pa()
    return pa.table(
        {f.name: pa.array([_cell(r.get(f.name), f.type) for r in rows], f.type) for f in schema},
        schema=schema,
    )


def _yaml_features(schema) -> list[dict]:
    """The `features` of the card's dataset_info, as `datasets` writes them."""
    pa, _ = _pa()
    out = []
    for f in schema:
        if pa.types.is_list(f.type):
            out.append({"name": f.name, "list": str(f.type.value_type).replace("double", "float64")})
        else:
            out.append({"name": f.name, "dtype": str(f.type).replace("double", "float64")})
    return out


# ------------------------------------------------------------------------------ reading the run
def _config_value(config: str, key: str) -> Any:
    """A gin binding's value from the manifest's config text, e.g. LoopConfig.base_model."""
    m = re.search(rf"^{re.escape(key)}\s*=\s*(.+)$", config, re.M)
    if not m:
        return None
    try:
        return ast.literal_eval(m.group(1).strip())
    except (ValueError, SyntaxError):
        return m.group(1).strip()


@dataclasses.dataclass
class IterationData:
    """One exported iteration's rows, read from RUN/iter_<i>.

    Attributes:
      iteration: the iteration (0-based).
      model: M_i, the model that synthesized and answered.
      kept: kept.jsonl.
      dropped: dropped.jsonl (every stage's drops, with `stage` and `reason`).
      scored: assessments.jsonl, each with `kept`, and the `stage` / `reason` of its drop.
      candidates: instructions parsed from the synthesis outputs (kept and dropped).
      instructions: those that passed the synthesis filters.
      responses: the answers that passed the response filter (the pairs rated).
      train: 'yes' (a model was trained), 'skipped' (nothing to train on) or 'not yet'.
    """

    iteration: int
    model: str
    kept: list[dict]
    dropped: list[dict]
    scored: list[dict]
    candidates: int
    instructions: int
    responses: int
    train: str


def _iteration_model(run: RunDir, i: int, it: IterationPaths, base_model: str) -> str:
    """M_i as the loop chose it: the summary's, else the last earlier trained model (`Loop.model_for`)."""
    if it.stage_done("summary"):
        model = io_utils.read_json(it.summary).get("model")
        if model:
            return str(model)
    for j in range(i - 1, -1, -1):
        if checkpoint.is_complete(run.iteration(j).model_dir):
            return str(run.iteration(j).model_dir)
    return base_model


def read_iteration(run: RunDir, i: int, base_model: str) -> IterationData:
    """Reads the data of iteration `i`, whose filter stage must be done.

    Args:
      run: the run directory.
      i: the iteration.
      base_model: LoopConfig.base_model, M_0.

    Returns:
      Its rows, each with `iteration` and `model` added.
    """
    it = run.iteration(i)
    model = _iteration_model(run, i, it, base_model)
    tag = {"iteration": i, "model": model}
    kept = [{**r, **tag} for r in io_utils.read_jsonl(it.kept)]
    dropped = [{**r, **tag} for r in io_utils.read_jsonl(it.dropped)]
    # A rated pair is kept, or dropped by the assess (selection) or filter (contamination) stage.
    drops = {str(d["id"]): d for d in dropped if d.get("stage") in ("assess", "filter")}
    kept_ids = {str(r["id"]) for r in kept}
    scored = []
    for r in io_utils.read_jsonl(it.assessments):
        d = drops.get(str(r["id"]), {})
        scored.append(
            {
                **r,
                **tag,
                "kept": str(r["id"]) in kept_ids,
                "stage": d.get("stage"),
                "reason": d.get("reason"),
                "contaminated_by": d.get("contaminated_by"),
            }
        )
    instructions = len(io_utils.read_jsonl(it.instructions))
    candidates = instructions + sum(d.get("stage") == "synthesize" for d in dropped)
    responses = len(io_utils.read_jsonl(it.responses))
    # A finished train stage without train_skipped.json trained a model (since deleted, maybe).
    done = it.stage_done("train")
    train = "skipped" if io_utils.exists(it.train_skipped) else "yes" if done else "not yet"
    return IterationData(i, model, kept, dropped, scored, candidates, instructions, responses, train)


def _mean_score(row: dict) -> float | None:
    q, f = row.get("quality_score"), row.get("following_score")
    return None if q is None or f is None else (float(q) + float(f)) / 2


def preference_pairs(scored: Iterable[dict]) -> list[dict]:
    """One (chosen, rejected) pair per prompt that has responses with different scores.

    Rows are grouped by (instruction, input); a response's score is the mean of its quality
    and following scores. Chosen is the best, rejected the worst (ties broken by id, so the
    result does not depend on row order); a group whose scores are all equal gives no pair.
    Rows without both scores, and rows dropped as contaminated, take no part.

    Args:
      scored: rated rows (`IterationData.scored`): id, iteration, model, instruction,
        input, response and the scores.

    Returns:
      Rows of the `preferences` config, in order of first appearance of their prompt.
    """
    groups: dict[tuple[str, str], list[dict]] = collections.defaultdict(list)
    for r in scored:
        if _mean_score(r) is None or r.get("reason") == "contaminated":
            continue
        groups[(r["instruction"], r.get("input") or "")].append(r)
    pairs = []
    for (instruction, input_text), rows in groups.items():
        ranked = sorted(rows, key=lambda r: (-_mean_score(r), str(r["id"])))
        best, worst = ranked[0], ranked[-1]
        if _mean_score(best) == _mean_score(worst):
            continue
        pairs.append(
            {
                "iteration": best["iteration"],
                "model": best["model"],
                "prompt": user_text(instruction, input_text),
                "instruction": instruction,
                "input": input_text,
                "chosen": best["response"],
                "rejected": worst["response"],
                "score_chosen": _mean_score(best),
                "score_rejected": _mean_score(worst),
                "chosen_id": str(best["id"]),
                "rejected_id": str(worst["id"]),
            }
        )
    return pairs


# ------------------------------------------------------------------------------ the output folder
def _files_under(root: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


def out_problem(out: str) -> str | None:
    """Why `out` may not receive the export, or None when it may.

    Allowed: a missing or empty folder, or an earlier export of ours whose files are all
    ours (listed in its marker): it is replaced. Anything else is refused.

    Args:
      out: the local output folder.

    Returns:
      A message naming the folder and what is in it, or None.
    """
    if not os.path.lexists(out):
        return None
    if not os.path.isdir(out) or os.path.islink(out):
        return f"{out}: exists and is a link or not a folder; refusing to replace it (nothing was changed)"
    names = sorted(os.listdir(out))
    if not names:
        return None
    if MARKER not in names:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return (
            f"{out}: not empty ({shown}) and not an earlier `isheep export-data` folder; refusing "
            "to write into it (nothing was changed): choose a new folder, or empty this one"
        )
    try:
        with open(os.path.join(out, MARKER)) as f:
            ours = set(json.load(f)["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"{out}: its {MARKER} is unreadable; refusing to replace the folder (nothing was changed)"
    foreign = [f for f in _files_under(out) if f != MARKER and f not in ours]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        return (
            f"{out}: an earlier export that now also holds files it did not write ({shown}); "
            "refusing to replace it (nothing was changed): move them out, or choose a new folder"
        )
    return None


def _remove_stale_temporaries(out: str) -> None:
    """Deletes temporary siblings that an earlier, killed export of the same OUT left."""
    parent, name = os.path.split(out)
    for entry in os.listdir(parent):
        for prefix in (_TMP_PREFIX, _OLD_PREFIX):
            tail = entry[len(name) + 1 + len(prefix) :]
            if entry.startswith(f".{name}{prefix}") and re.fullmatch(r"[0-9a-f]{8}", tail):
                log.info("removing %s, left by an interrupted export", os.path.join(parent, entry))
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _swap_into_place(tmp: str, out: str) -> None:
    """Renames the finished `tmp` to `out`, replacing an empty folder or an earlier export."""
    problem = out_problem(out)  # again: files may have appeared while we were writing
    if problem:
        raise ExportError(problem)
    old = None
    if os.path.isdir(out):
        if os.listdir(out):
            parent, name = os.path.split(out)
            old = os.path.join(parent, f".{name}{_OLD_PREFIX}{uuid.uuid4().hex[:8]}")
            os.rename(out, old)
        else:
            os.rmdir(out)  # only ever removes an empty folder
    try:
        os.rename(tmp, out)
    except OSError:
        if old:  # put the earlier export back rather than leave no OUT at all
            os.rename(old, out)
        raise
    if old:
        shutil.rmtree(old)


# ------------------------------------------------------------------------------ the card
def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return name
    return "100K<n<1M" if n < 1_000_000 else "n>1M"


def _table_md(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
    ]


_DESCRIPTIONS = {
    "kept": "pairs that survived every filter (the training data), with their scores",
    "dropped": "rows dropped at any stage: `stage` (synthesize, respond, assess, filter) and "
    "`reason`; the response and scores where the stage had them",
    "scored": "every rated pair with the judge's scores, `kept`, and the stage / reason of its drop",
    PREFERENCES: "prompt, chosen, rejected, score_chosen, score_rejected (the mean of the two "
    "scores): the best and the worst response of each instruction with several scored responses",
}
_COUNT_COLUMNS = (
    *("iteration", "model", "candidates", "instructions", "responses"),
    *("scored", "kept", "dropped", "trained"),
)


def _card(
    run: RunDir,
    manifest: dict,
    base_model: str,
    data: list[IterationData],
    skipped: list[str],
    written: dict[str, dict[int, tuple[str, int, int]]],
    not_exported: set[str],
) -> str:
    """The dataset card: YAML front matter (`configs`, `dataset_info`, tags) and a body."""
    import yaml

    schemas = _schemas()
    configs, info = [], []
    for kind, splits in written.items():
        if not splits:
            continue
        configs.append(
            {
                "config_name": kind,
                "data_files": [{"split": f"iteration_{i}", "path": p} for i, (p, _, _) in splits.items()],
                **({"default": True} if kind == "kept" else {}),
            }
        )
        info.append(
            {
                "config_name": kind,
                "features": _yaml_features(schemas[kind]),
                "splits": [
                    {"name": f"iteration_{i}", "num_bytes": b, "num_examples": n}
                    for i, (_, n, b) in splits.items()
                ],
                "dataset_size": sum(b for _, _, b in splits.values()),
            }
        )
    n_kept = sum(len(d.kept) for d in data)
    header = {
        "pretty_name": f"I-SHEEP self-alignment data ({os.path.basename(str(run.root).rstrip('/'))})",
        "tags": ["synthetic", "self-alignment", "i-sheep", "isheep_jax"],
        "task_categories": ["text-generation"],
        "size_categories": [_size_category(n_kept)],
        "configs": configs,
        "dataset_info": info,
    }
    # `license: other` is a placeholder the Hub accepts; the comment and the body say to set it.
    front = (
        "---\n"
        "# TODO: set the license. The outputs of the source model fall under its terms.\n"
        "license: other\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n"
    )
    lines = [
        f"# {header['pretty_name']}",
        "",
        "> **License: not set.** The `license: other` in the YAML header is a placeholder: set it "
        "to the terms that apply before you share this dataset; the responses were written by "
        f"`{base_model}` (and models fine-tuned from it), whose license governs them.",
        "",
        "Synthetic instruction data from an [I-SHEEP](https://arxiv.org/abs/2408.08072) "
        "self-alignment run of `isheep_jax`: in each iteration the model synthesizes "
        "instructions from few-shot seed demos, answers them, rates its own answers "
        "(quality and instruction following, 1-10), and the pairs that pass the filters "
        "fine-tune the next model.",
        "",
        "## Source",
        "",
        f"- run directory: `{run.root}`",
        f"- source model (`LoopConfig.base_model`): `{base_model}`",
        f"- config sha256: `{manifest.get('config_sha256', '?')}` (the run's resolved gin "
        "config, in its manifest.json and config.gin)",
        f"- exported: {time.strftime('%Y-%m-%dT%H:%M:%S')} by `isheep export-data`",
        "",
        "## Configs",
        "",
        "One split per iteration (`iteration_0`, ... as in the run directory's `iter_<i>`).",
        "",
        *_table_md(("config", "rows"), [(f"`{k}`", _DESCRIPTIONS[k]) for k, w in written.items() if w]),
        "",
        "```python",
        "import datasets",
        'kept = datasets.load_dataset("path/to/this/folder", "kept")  # one split per iteration',
        "```",
        "",
        "## Per-iteration counts",
        "",
        *_table_md(
            _COUNT_COLUMNS,
            [
                (d.iteration, f"`{d.model}`", d.candidates, d.instructions, d.responses)
                + (len(d.scored), len(d.kept), len(d.dropped), d.train)
                for d in data
            ],
        ),
        "",
        "## Drop reasons",
        "",
    ]
    counts = collections.Counter(
        (r.get("stage"), r.get("reason"), d.iteration) for d in data for r in d.dropped
    )
    reasons = sorted({(s, r) for s, r, _ in counts}, key=lambda sr: (str(sr[0]), str(sr[1])))
    if reasons:
        lines += _table_md(
            ("stage", "reason", *(f"iteration {d.iteration}" for d in data), "total"),
            [
                (
                    s,
                    r,
                    *(counts[(s, r, d.iteration)] for d in data),
                    sum(counts[(s, r, d.iteration)] for d in data),
                )
                for s, r in reasons
            ],
        )
    else:
        lines.append("Nothing was dropped.")
    notes = [f"- {s}" for s in skipped]
    for kind, splits in written.items():
        if kind == PREFERENCES and not splits:
            notes.append(
                "- `--preferences` found no instruction with two scored responses of different "
                "scores, so there is no `preferences` config: the loop answers each instruction "
                "once and drops near-duplicate instructions."
            )
        elif not splits:
            notes.append(f"- there is no `{kind}` config: no exported iteration has such a row.")
        else:  # `datasets` cannot load an empty split, so none is declared
            notes += [
                f"- `{kind}` has no split `iteration_{d.iteration}`: it has no row."
                for d in data
                if d.iteration not in splits
            ]
    if not_exported:
        notes.append(
            f"- fields of the run's rows not in the columns above: {', '.join(sorted(not_exported))}."
        )
    if notes:
        lines += ["", "## Notes", "", *notes]
    return front + "\n" + "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ export
@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export_data` wrote.

    Attributes:
      out: the output folder.
      iterations: the iterations exported.
      skipped: a note per iteration left out (unfinished).
      rows: config -> rows written (all splits).
    """

    out: str
    iterations: tuple[int, ...]
    skipped: tuple[str, ...]
    rows: dict[str, int]


def export_data(
    run_dir: str | os.PathLike, out: str | os.PathLike, preferences: bool = False
) -> ExportResult:
    """Writes the kept, dropped and scored rows of a run as a `datasets` Parquet folder.

    Args:
      run_dir: RUN, a run directory (local or a URL such as gs://...).
      out: the local output folder: missing, empty, or an earlier export of ours.
      preferences: also write the `preferences` config (`preference_pairs`).

    Returns:
      What was written.

    Raises:
      RunError: `run_dir` is not a run directory, or no iteration has finished its filter stage.
      ExportError: `out` holds files we did not write, or is a URL.
    """
    pa, pq = _pa()
    if "://" in str(out):
        raise ExportError(f"{out}: the export folder must be local (copy it to the bucket afterwards)")
    out = os.path.abspath(os.fspath(out))
    problem = out_problem(out)
    if problem:  # before reading anything: a refused folder costs nothing
        raise ExportError(problem)
    run = RunDir(run_dir)
    if not run.manifest_path.exists():
        raise RunError(f"{run_dir}: not a run directory (no manifest.json)")
    manifest = io_utils.read_json(run.manifest_path)
    config = manifest.get("config", "")
    base_model = str(_config_value(config, "LoopConfig.base_model") or "?")

    data, skipped = [], []
    for i in run.iterations_present():
        if run.iteration(i).stage_done("filter"):
            data.append(read_iteration(run, i, base_model))
        else:
            skipped.append(f"iteration {i} is left out: its filter stage has not finished.")
    if not data:
        raise RunError(f"{run.root}: no iteration has finished its filter stage; nothing to export")

    schemas = _schemas()
    known = {f.name for s in schemas.values() for f in s}
    not_exported = {
        k for d in data for rows in (d.kept, d.dropped, d.scored) for r in rows for k in r
    } - known
    kinds = KINDS + ((PREFERENCES,) if preferences else ())
    parent, name = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_temporaries(out)
    tmp = os.path.join(parent, f".{name}{_TMP_PREFIX}{uuid.uuid4().hex[:8]}")
    os.mkdir(tmp)
    try:
        written: dict[str, dict[int, tuple[str, int, int]]] = {k: {} for k in kinds}
        for d in data:
            by_kind = {"kept": d.kept, "dropped": d.dropped, "scored": d.scored}
            if preferences:
                by_kind[PREFERENCES] = preference_pairs(d.scored)
            for kind in kinds:
                rows = by_kind[kind]
                if not rows:  # datasets cannot load an empty Parquet split
                    continue
                table = _table(rows, schemas[kind])
                os.makedirs(os.path.join(tmp, kind), exist_ok=True)
                part = os.path.join(tmp, kind, "part.parquet")
                pq.write_table(table, part)
                with open(part, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()[:16]
                rel = f"{kind}/iteration_{d.iteration}-00000-of-00001-{digest}.parquet"
                os.rename(part, os.path.join(tmp, rel))
                written[kind][d.iteration] = (rel, table.num_rows, table.nbytes)
        card = _card(run, manifest, base_model, data, skipped, written, not_exported)
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(card)
        files = _files_under(tmp)
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump({"format": 1, "run": str(run.root), "files": files}, f, indent=2)
            f.write("\n")
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(
        out=out,
        iterations=tuple(d.iteration for d in data),
        skipped=tuple(skipped),
        rows={k: sum(n for _, n, _ in w.values()) for k, w in written.items()},
    )
