"""Prompts and gold answers: hub datasets, local files, procedural tasks; the prompt format.

Every row becomes a dict with at least ``question`` and ``answer`` (mapped from the recipe's
`question_field` / `answer_field`) plus the dataset's other columns, which rewards receive as
keyword lists. Train and held-out rows never overlap; their order is a pure function of
`shuffle_seed`, and the prompts of step t a pure function of (rows, seed, t), so a resumed run
sees exactly the prompts an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from .config import ConfigError, DataConfig

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
TASK_PREFIX = "reasoning_gym:"
MBPP_PREFIX = "mbpp:"  # mbpp:<local MBPP-format .jsonl>
HUMANEVAL = "humaneval"
TRL_PROMPT = "prompt"  # the prompt column of TRL's standard and conversational dataset formats


@dataclass(frozen=True)
class DataSource:
    """What `data.path` names, parsed once: the loaders and the model card both read this."""

    kind: Literal["task", "humaneval", "mbpp", "local", "hub"]
    name: str  # task name, file path, or hub dataset id ("humaneval" for HumanEval)


def parse_source(path: str) -> DataSource:
    if path.startswith(TASK_PREFIX):
        return DataSource("task", path[len(TASK_PREFIX):])
    if path == HUMANEVAL:
        return DataSource("humaneval", path)
    if path.startswith(MBPP_PREFIX):
        return DataSource("mbpp", path[len(MBPP_PREFIX):])
    if Path(path).suffix in LOCAL_FORMATS:
        return DataSource("local", path)
    return DataSource("hub", path)


def check_local_file(key: str, value: str) -> None:
    """ConfigError if `value` (of recipe key `key`) names a local data file that is not there."""
    if parse_source(value).kind == "local" and not Path(value).is_file():
        raise ConfigError(f"{key}: file '{value}' not found; give an existing .jsonl/.json/.parquet/.csv file or a hub dataset id")


def _load_split(cfg: DataConfig, split: str, key: str = "data.path") -> list[dict[str, Any]]:
    """Rows of a local file (`split` is then ignored) or of a hub dataset's split."""
    import datasets

    path = Path(cfg.path)
    if path.suffix in LOCAL_FORMATS:
        check_local_file(key, cfg.path)
        try:
            ds = datasets.load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
        except Exception as exc:  # a malformed file: one line naming it (and the line, for JSONL)
            raise ConfigError(f"{key}: {_unreadable(path, exc)}") from None
    else:
        try:
            ds = datasets.load_dataset(cfg.path, cfg.name, split=split)
        except Exception as exc:  # offline, a typo, a gated dataset: one line, with the fix
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"data.path: could not load hub dataset '{cfg.path}' (split '{split}'): {first}; "
                "check the name and network, or give a local .jsonl file"
            ) from None
    return [dict(r) for r in ds]


def _unreadable(path: Path, exc: Exception) -> str:
    """Why a local data file cannot be read, in words: the first bad line of a JSONL file."""
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                try:
                    if line.strip():
                        json.loads(line)
                except json.JSONDecodeError as err:
                    return f"{path} line {number} is not valid JSON ({err.msg}); fix or remove that line"
    cause = exc.__cause__ or exc
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return f"cannot read {path} as {LOCAL_FORMATS[path.suffix]}: {first}"


def _normalize(rows: list[dict[str, Any]], cfg: DataConfig) -> list[dict[str, Any]]:
    """Every row gets `question` and `answer` from the recipe's fields (a TRL-format dataset's
    `prompt` column stands in for a missing question field)."""
    if not rows:
        raise ConfigError(f"data.path: '{cfg.path}' has no rows")
    question_field = cfg.question_field
    if question_field not in rows[0] and TRL_PROMPT in rows[0]:
        question_field = TRL_PROMPT
    for field_name, key in ((question_field, "data.question_field"), (cfg.answer_field, "data.answer_field")):
        if field_name is not None and field_name not in rows[0]:
            raise ConfigError(f"{key}: column '{field_name}' not in {cfg.path}; columns are {sorted(rows[0])}"
                              + ("; data.answer_field=null if the rewards need no gold answer" if key == "data.answer_field" else ""))
    return [{**r, "question": r[question_field],
             "answer": None if cfg.answer_field is None else str(r[cfg.answer_field])} for r in rows]


def load_rows(cfg: DataConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, eval rows), deterministic, disjoint. The eval rows are the held-out set, or
    with `evaluate_on: validation` the `validation_size` rows carved off the training rows for
    choosing settings (never trained on), so that the held-out set is scored once, at the end."""
    train_rows, held_out = _train_and_held_out(cfg)
    validation, train_rows = _carve_validation(train_rows, cfg.validation_size)
    if cfg.evaluate_on == "validation":
        if not validation:
            raise ConfigError("data.evaluate_on: validation needs data.validation_size > 0 (rows carved off the training data)")
        return train_rows, validation
    return train_rows, held_out


def _carve_validation(rows: list[dict[str, Any]], size: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(validation rows, training rows left): the first `size` distinct questions, and every
    training row that asks none of them. Carving by position is not enough: a task drawn from a
    small space repeats questions (the quickstart's 1000 sums held 573 distinct ones), and a
    validation question also trained on scores memory, not the held-out kind of skill."""
    if size == 0:
        return [], rows
    validation: list[dict[str, Any]] = []
    carved: set[str] = set()
    for row in rows:
        if len(validation) == size:
            break
        key = _question_key(row["question"])
        if key not in carved:
            carved.add(key)
            validation.append(row)
    left = [row for row in rows if _question_key(row["question"]) not in carved]
    if len(validation) < size or not left:
        raise ConfigError(
            f"data.validation_size: {size} leaves no training rows out of {len(rows)} "
            f"({len({_question_key(r['question']) for r in rows})} distinct questions); lower it"
        )
    return validation, left


def _question_key(question: Any) -> str:
    """A hashable identity of a question: its text, or a conversation's messages as JSON."""
    return question if isinstance(question, str) else json.dumps(question, sort_keys=True)


def _train_and_held_out(cfg: DataConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    source = parse_source(cfg.path)
    if source.kind == "task":
        from .tasks import load_task

        return load_task(source.name, cfg.task_options, cfg.train_size, cfg.eval_size, cfg.shuffle_seed)
    if source.kind == "humaneval":
        from .code_tasks import load_humaneval

        rows = load_humaneval()
    elif source.kind == "mbpp":
        from .code_tasks import load_mbpp

        rows = load_mbpp(source.name)
    else:
        rows = _normalize(_load_split(cfg, cfg.split), cfg)
    random.Random(cfg.shuffle_seed).shuffle(rows)
    if cfg.eval_split is not None:
        if Path(cfg.eval_split).suffix in LOCAL_FORMATS:  # a local held-out file
            held_out = _load_split(dataclasses.replace(cfg, path=cfg.eval_split), "", "data.eval_split")
        elif Path(cfg.path).suffix in LOCAL_FORMATS:
            raise ConfigError(
                f"data.eval_split: '{cfg.eval_split}' is a split name but data.path is a local file; "
                "give a local held-out file (data.eval_split=test.jsonl) or data.eval_split=null to carve data.eval_size rows off"
            )
        else:
            held_out = _load_split(cfg, cfg.eval_split)
        eval_rows = _normalize(held_out, cfg)[: cfg.eval_size]
        train_rows = rows
    else:
        if cfg.eval_size >= len(rows):
            raise ConfigError(f"data.eval_size: {cfg.eval_size} leaves no training rows out of {len(rows)}; lower it or set data.eval_split")
        eval_rows, train_rows = rows[: cfg.eval_size], rows[cfg.eval_size:]
    if cfg.max_train_rows:
        train_rows = train_rows[: cfg.max_train_rows]
    return train_rows, eval_rows


def rows_for_step(rows: list[dict[str, Any]], step: int, count: int, seed: int) -> list[dict[str, Any]]:
    """The `count` training rows of step `step`: epochs of seeded permutations, walked in order."""
    orders: dict[int, list[int]] = {}
    out = []
    for i in range(step * count, (step + 1) * count):
        epoch, pos = divmod(i, len(rows))
        if epoch not in orders:
            orders[epoch] = list(range(len(rows)))
            random.Random(f"{seed}:{epoch}").shuffle(orders[epoch])
        out.append(rows[orders[epoch][pos]])
    return out


def is_conversational(question: Any) -> bool:
    """A prompt given as chat messages (TRL's conversational format), not as text."""
    return isinstance(question, list) and all(isinstance(m, dict) and "role" in m for m in question)


def reward_prompt(question: Any, cfg: DataConfig) -> str | list[dict[str, str]]:
    """The prompt as reward functions receive it (TRL's `prompts=`): the formatted text, or the
    chat messages of a conversational dataset."""
    return question if is_conversational(question) else cfg.prompt_template.format(question=question)


def prompt_form(tokenizer, question: Any, cfg: DataConfig) -> str | list[dict[str, str]]:
    """One prompt before tokenization, without the response prefix: chat messages (optional
    system prompt, then the templated question) when the chat template applies, else the raw
    text. A conversational question (chat messages) is kept as it is, after the recipe's system
    prompt unless it has its own."""
    if is_conversational(question):
        has_system = question and question[0].get("role") == "system"
        return ([] if has_system or not cfg.system_prompt else [{"role": "system", "content": cfg.system_prompt}]) + question
    text = cfg.prompt_template.format(question=question)
    if cfg.chat_template and getattr(tokenizer, "chat_template", None):
        return ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []) + [{"role": "user", "content": text}]
    return cfg.system_prompt + "\n\n" + text if cfg.system_prompt else text


def prompt_ids(tokenizer, question: Any, cfg: DataConfig) -> list[int]:
    """Token ids of one prompt (`prompt_form`), then the recipe's response prefix (the answer's
    start)."""
    form = prompt_form(tokenizer, question, cfg)
    if isinstance(form, str):
        return tokenizer(form + cfg.response_prefix)["input_ids"]
    rendered = tokenizer.apply_chat_template(form, tokenize=False, add_generation_prompt=True)
    return tokenizer(rendered + cfg.response_prefix, add_special_tokens=False)["input_ids"]


def sample_prompts(tokenizer, rows: list[dict[str, Any]], cfg: DataConfig, sample: int = 2000) -> list[list[int]]:
    """Prompt ids of the first `sample` rows: enough to size an engine by (a hub dataset may
    have millions of rows)."""
    return [prompt_ids(tokenizer, r["question"], cfg) for r in rows[:sample]]


@dataclass(frozen=True)
class PromptLengths:
    """What an engine is sized by: the longest prompt (its KV cache) and the tokens that every
    prompt starts with (chat template, system prompt, a fixed instruction), which a prefix cache
    computes once per member and shares among that member's prompts."""

    longest: int = 0
    shared_prefix: int = 0

    @classmethod
    def of(cls, prompts: Iterable[Sequence[int]]) -> PromptLengths:
        prompts = [list(p) for p in prompts]
        return cls(max(map(len, prompts), default=0), len(os.path.commonprefix(prompts)) if prompts else 0)


def columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows -> {column: [values]} as rewards take them (keys of the first row)."""
    return {k: [r.get(k) for r in rows] for k in rows[0]} if rows else {}
