"""Alpaca datasets: a leakage-free train/eval split, export to Alpaca JSON, tolerant import.

Alpaca JSON is a JSON array of ``{"instruction", "input", "output"}`` objects. With an eval
fraction, :func:`export_alpaca` writes the train set to ``FILE`` and the eval set next to it with
``.eval`` before the suffix (``pairs.json`` -> ``pairs.eval.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from feedback.errors import FeedbackError

# Accepted spellings of the three fields, in order of preference (the original data came as
# question/answer JSONL; other tools write prompt/response or instruction/output).
INSTRUCTION_KEYS = ("instruction", "question", "prompt", "query")
INPUT_KEYS = ("input", "context")
OUTPUT_KEYS = ("output", "answer", "response", "completion")


PairLike = TypeVar("PairLike")  # a feedback.records.Pair or an Alpaca dict


def normalize_question(text: str) -> str:
    """The grouping key of a question: case, punctuation and spacing don't make a new question."""
    return " ".join(re.sub(r"[\W_]+", " ", text.casefold()).split())


def _instruction(pair: Any) -> str:
    value = pair.get("instruction") if isinstance(pair, Mapping) else getattr(pair, "instruction", None)
    if not isinstance(value, str):
        raise FeedbackError(f"a pair without an instruction cannot be split: {pair!r}")
    return value


def _goes_to_eval(key: str, eval_fraction: float, seed: int) -> tuple[bool, float]:
    digest = hashlib.sha256(f"{seed}\x1f{key}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return position < eval_fraction, position


def split_pairs(
    pairs: Sequence[PairLike], eval_fraction: float, seed: int = 0
) -> tuple[list[PairLike], list[PairLike]]:
    """Split pairs into (train, eval) so that no question is in both; deterministic.

    Pairs are grouped by :func:`normalize_question`; a group goes to eval when a hash of
    (seed, question) falls below ``eval_fraction``. The side a question lands on therefore does not
    depend on the other pairs: as the log grows, an eval question stays an eval question, so an
    adapter is never gated on questions its predecessor was trained on. When that leaves one side
    empty although there are at least two questions, the question with the lowest (highest) hash
    moves over, so a small dataset still gets an eval set; a single question always goes to train.
    Order within each side is kept.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise FeedbackError(f"eval fraction must be in [0, 1), got {eval_fraction}: e.g. 0.2 for 20 %.")
    groups: dict[str, float] = {}
    to_eval: set[str] = set()
    for pair in pairs:
        key = normalize_question(_instruction(pair))
        if key not in groups:
            chosen, groups[key] = _goes_to_eval(key, eval_fraction, seed)
            if chosen:
                to_eval.add(key)
    if len(groups) == 1:
        to_eval.clear()  # holding out the only question would leave nothing to train on
    elif eval_fraction > 0 and len(groups) >= 2:
        ranked = sorted(groups, key=lambda k: (groups[k], k))
        if not to_eval:
            to_eval.add(ranked[0])
        elif len(to_eval) == len(groups):
            to_eval.discard(ranked[-1])
    train: list[PairLike] = []
    held_out: list[PairLike] = []
    for pair in pairs:
        (held_out if normalize_question(_instruction(pair)) in to_eval else train).append(pair)
    return train, held_out


def eval_path(out: Path) -> Path:
    """Where the eval set of ``out`` goes: ``.eval`` before the suffix (``a.json`` -> ``a.eval.json``)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.eval{out.suffix or '.json'}")


def _alpaca(pair: Any) -> dict[str, str]:
    if isinstance(pair, Mapping):
        record = {key: pair.get(key, "") or "" for key in ("instruction", "input", "output")}
    else:
        record = pair.to_alpaca()
    return {key: str(record[key]) for key in ("instruction", "input", "output")}


def _write_json(path: Path, records: list[dict[str, str]]) -> None:
    # Write then rename: a crash or a full disk never leaves a truncated dataset behind.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(records, handle, ensure_ascii=False, indent=2)
        handle.write("\n")
    os.replace(tmp, path)


@dataclass(frozen=True)
class ExportReport:
    """Where an export went and how many records each file holds."""

    train_path: Path
    train: int
    eval_path: Path | None = None
    eval: int = 0


def _export(records: Sequence[dict[str, str]], out: Path, eval_fraction: float, seed: int) -> ExportReport:
    out = Path(out)
    try:
        if eval_fraction <= 0:
            _write_json(out, list(records))
            return ExportReport(out, len(records))
        train, held_out = split_pairs(records, eval_fraction, seed)
        _write_json(out, train)
        _write_json(eval_path(out), held_out)
    except OSError as error:
        raise FeedbackError(
            f"cannot write the dataset to {out}: {error}. Choose a writable --out path."
        ) from error
    return ExportReport(out, len(train), eval_path(out), len(held_out))


def export_alpaca(pairs: Sequence[Any], out: Path, eval_fraction: float = 0.0, seed: int = 0) -> ExportReport:
    """Write pairs as Alpaca JSON to ``out``; with ``eval_fraction`` > 0 also ``eval_path(out)``."""
    return _export([_alpaca(p) for p in pairs], out, eval_fraction, seed)


def preference_records(pairs: Sequence[Any]) -> list[dict[str, str]]:
    """``{"instruction", "input", "chosen", "rejected"}`` for every answer with a 👎 and a correction.

    The accepted correction is the chosen answer, the voted-down answer the rejected one (the
    Alpaca preference format of LLaMA-Factory; TRL's DPO takes it as prompt/chosen/rejected).
    Pass pairs of kinds ``corrected`` and ``negative``; pairs without an answer are ignored.
    """
    chosen: dict[int, Any] = {}
    rejected: dict[int, Any] = {}
    for pair in pairs:
        answer_id = getattr(pair, "answer_id", None)
        if answer_id is None:
            continue
        if pair.kind == "corrected":
            chosen[answer_id] = pair
        elif pair.kind == "negative":
            rejected[answer_id] = pair
    return [
        {
            "instruction": chosen[answer_id].instruction,
            "input": chosen[answer_id].input,
            "chosen": chosen[answer_id].output,
            "rejected": rejected[answer_id].output,
        }
        for answer_id in sorted(chosen.keys() & rejected.keys())
    ]


def export_preference(
    pairs: Sequence[Any], out: Path, eval_fraction: float = 0.0, seed: int = 0
) -> ExportReport:
    """Write :func:`preference_records` of ``pairs`` as JSON, split like :func:`export_alpaca`."""
    return _export(preference_records(pairs), out, eval_fraction, seed)


@dataclass(frozen=True)
class DatasetRead:
    """The valid rows of a dataset file (as Alpaca dicts) and one line per skipped row."""

    rows: list[dict[str, str]]
    problems: list[str]


def _pick(record: Mapping[str, Any], keys: Sequence[str], name: str, required: bool) -> str:
    for key in keys:
        if key in record and record[key] is not None:
            value = record[key]
            if not isinstance(value, str):
                raise ValueError(f"'{key}' must be text, got {type(value).__name__}")
            if required and not value.strip():
                raise ValueError(f"'{key}' is empty")
            return value.strip()
    if required:
        raise ValueError(f"no {name} (expected one of: {', '.join(keys)})")
    return ""


def normalize_record(record: Any) -> dict[str, str]:
    """One dataset record as ``{"instruction", "input", "output"}``; ValueError says what is wrong."""
    if not isinstance(record, Mapping):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    row = {
        "instruction": _pick(record, INSTRUCTION_KEYS, "instruction", True),
        "input": _pick(record, INPUT_KEYS, "input", False),
        "output": _pick(record, OUTPUT_KEYS, "output", True),
    }
    kind = record.get("kind")
    if kind is not None:
        row["kind"] = str(kind)
    return row


def read_dataset(path: Path) -> DatasetRead:
    """Read Alpaca JSON (an array) or JSONL (one object a line, question/answer or instruction/output).

    Bad rows are skipped and reported as ``line N: why`` (JSONL) or ``item N: why`` (JSON array,
    counted from 1); a file that cannot be read or parsed at all raises :class:`FeedbackError`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FeedbackError(f"dataset {path} does not exist: check the path.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise FeedbackError(
            f"cannot read dataset {path}: {error}. It must be UTF-8 JSON or JSONL."
        ) from error
    rows: list[dict[str, str]] = []
    problems: list[str] = []
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise FeedbackError(
                f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}). "
                "Fix the file or save it as JSONL, one record a line, so bad lines can be skipped."
            ) from error
        for index, item in enumerate(items, start=1):
            try:
                rows.append(normalize_record(item))
            except ValueError as error:
                problems.append(f"item {index}: {error}")
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(normalize_record(json.loads(line)))
            except json.JSONDecodeError as error:
                problems.append(f"line {number}: invalid JSON ({error.msg} at column {error.colno})")
            except ValueError as error:
                problems.append(f"line {number}: {error}")
        if problems and not rows and sum(1 for line in text.splitlines() if line.strip()) > 1:
            # Maybe not JSONL at all but one pretty-printed JSON object: say so rather than
            # reporting every line of it as broken.
            try:
                whole = json.loads(text)
            except json.JSONDecodeError:
                whole = None
            if isinstance(whole, Mapping):
                try:
                    return DatasetRead([normalize_record(whole)], [])
                except ValueError as error:
                    raise FeedbackError(
                        f"{path} holds one JSON object, not a dataset ({error}). "
                        "Expected a JSON array of records or JSONL, one record a line."
                    ) from None
    return DatasetRead(rows, problems)
