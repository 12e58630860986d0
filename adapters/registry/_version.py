"""One version's directory: the name of every file in it, its metadata (:class:`AdapterVersion`), the
staging directory a training run writes it in (:class:`Stage`), and the reads and writes of its files.

Layout of a version (and of a run's stage, before it is published)::

    adapter_config.json           the LoRA's config (peft's format)
    adapter_model.safetensors     its weights (the only weights format the runtime loads)
    loopbot.json                  metadata: version, base model, parent, data hash, pair ids, metrics, ...
    dataset.jsonl                 the training rows (pairs, their rephrasings, anchors)
    eval.jsonl                    rows held out of training to measure an eval loss on (optional)
    preference.jsonl              preference rows: a correction over the answer it replaced (optional)
    questions.json                its scope: the questions it was taught, with their answers
    train_config.json, train.log, result.json    the training process's config, log and metrics
    learning_curve.csv, .png      train loss per step, eval loss per epoch (numbers only)
    gate_report.csv               the gate's per-question report
    regression_answers.json       its own answers to the regression set at its gate (reused later)
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adapters.errors import AdapterError

METADATA_FILE = "loopbot.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
DATASET_FILE = "dataset.jsonl"  # the training rows a version was trained on
EVAL_DATASET_FILE = "eval.jsonl"  # the rows held out of its training to measure an eval loss on
# Its preference rows (a correction chosen over the answer it replaced), when preference training ran
PREFERENCE_DATASET_FILE = "preference.jsonl"
# Every file of a version that holds members' training text (a forget deletes them)
TRAINING_DATA_FILES = (DATASET_FILE, EVAL_DATASET_FILE, PREFERENCE_DATASET_FILE)
TRAIN_CONFIG_FILE = "train_config.json"
TRAIN_LOG_FILE = "train.log"
RESULT_FILE = "result.json"  # the training process's metrics
LEARNING_CURVE_FILE = "learning_curve.csv"  # its train loss per step, eval loss per epoch (numbers only)
GATE_REPORT_FILE = "gate_report.csv"  # the gate's per-question report of a version
# The version's own answers to the regression set at its gate, reused when it is the active one
REGRESSION_FILE = "regression_answers.json"
# The questions a version was taught (corrections and their rephrasings; not 👍 answers, not
# anchors): it answers only questions close to one of them (adapters/serving/_routing.py)
SCOPE_FILE = "questions.json"


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON so readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


@dataclass
class AdapterVersion:
    """One published adapter version and its metadata (``loopbot.json``)."""

    version: str
    path: Path
    base_model: str = ""
    parent: str | None = None
    data_hash: str = ""
    pair_ids: list[str] = field(default_factory=list)
    pair_count: int = 0
    anchor_count: int = 0  # replayed base-model answers trained on too (not feedback pairs)
    heldout_pair_ids: list[str] = field(default_factory=list)  # the gate's pairs (not in the weights)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0
    gate_report: str | None = None
    train_config: dict[str, Any] = field(default_factory=dict)
    # The name a runtime loads it under: unique across registries (``g<guild>-v0003``), never stored.
    served_name: str = ""

    def forgotten_pairs(self, forgotten_pair_ids: Iterable[int | str]) -> set[str]:
        """Which of ``forgotten_pair_ids`` this version was trained on (empty: it can be served)."""
        return {str(i) for i in forgotten_pair_ids} & set(self.pair_ids)

    def to_json(self) -> dict[str, Any]:
        """The metadata as stored in ``loopbot.json`` (the path and served name are implied)."""
        data = asdict(self)
        data.pop("path")
        data.pop("served_name")
        return data

    @classmethod
    def from_dir(cls, path: Path, scope: str = "") -> AdapterVersion:
        """Read a version directory's metadata; a missing or broken file raises :class:`AdapterError`."""
        meta_path = path / METADATA_FILE
        try:
            data = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise AdapterError(
                f"Adapter metadata {meta_path} is missing or unreadable ({error}). "
                "Delete the directory or restore it from a backup."
            ) from None
        known = {f for f in cls.__dataclass_fields__ if f not in ("path", "served_name")}
        data = {k: v for k, v in data.items() if k in known}
        data["version"] = path.name
        return cls(path=path, served_name=f"{scope}-{path.name}" if scope else path.name, **data)

    @property
    def gate_report_path(self) -> Path:
        """Where the gate writes its per-question CSV report of this version."""
        return self.path / GATE_REPORT_FILE

    @property
    def learning_curve_path(self) -> Path:
        """The version's learning curve (CSV; a PNG of it beside, when matplotlib was there)."""
        return self.path / LEARNING_CURVE_FILE

    def read_regression_answers(self) -> Any | None:
        """What :meth:`write_regression_answers` stored (None: never stored, or scrubbed by a forget)."""
        try:
            return json.loads((self.path / REGRESSION_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def write_regression_answers(self, data: Any) -> None:
        """Keep the version's answers to the regression set (JSON), atomically."""
        write_json_atomic(self.path / REGRESSION_FILE, data)


class Stage:
    """A training run's private directory; :meth:`AdapterRegistry.publish` turns it into a version.

    The run writes its files through it: the datasets, its scope, the training process's config (which
    names where that process writes its log, metrics, learning curve and the LoRA itself)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"Stage({str(self.path)!r})"

    def write_dataset(self, records: Iterable[dict[str, Any]]) -> Path:
        """Write the training rows (JSON lines); returns the file's path."""
        return self._write_rows(DATASET_FILE, records)

    def write_eval_dataset(self, records: Iterable[dict[str, Any]]) -> Path:
        """Write the rows held out of training to measure an eval loss on; returns the file's path."""
        return self._write_rows(EVAL_DATASET_FILE, records)

    def write_preference_dataset(self, records: Iterable[dict[str, Any]]) -> Path:
        """Write the preference rows (a correction over the answer it replaced); returns the path."""
        return self._write_rows(PREFERENCE_DATASET_FILE, records)

    def _write_rows(self, name: str, records: Iterable[dict[str, Any]]) -> Path:
        path = self.path / name
        path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
        return path

    def write_scope(
        self, taught: Iterable[str | tuple[str, str]], parent: AdapterVersion | None = None
    ) -> list[str]:
        """Write the run's scope (see :func:`write_scope`); returns its questions."""
        return write_scope(self.path, taught, parent.path if parent is not None else None)

    def write_config(self, config: dict[str, Any]) -> Path:
        """Write the training process's config; returns its path (the process's only argument)."""
        path = self.path / TRAIN_CONFIG_FILE
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        return path

    @property
    def log_path(self) -> Path:
        """Where the training process's stderr goes (kept with a failed run)."""
        return self.path / TRAIN_LOG_FILE

    @property
    def result_path(self) -> Path:
        """Where the training process writes its metrics."""
        return self.path / RESULT_FILE

    @property
    def learning_curve_path(self) -> Path:
        """Where the training process writes the learning curve."""
        return self.path / LEARNING_CURVE_FILE


def write_scope(
    directory: Path, taught: Iterable[str | tuple[str, str]], parent: Path | None = None
) -> list[str]:
    """Write a version's scope: the ``taught`` questions (each alone or as ``(question, answer)``)
    and, continuing from ``parent``, the parent's; each question once. Returns the questions."""
    entries: dict[str, str] = {}
    inherited = scope_entries(parent) if parent is not None else None
    for question, answer in [*(inherited or ()), *(_entry(item) for item in taught)]:
        if question and question not in entries:
            entries[question] = answer
    write_json_atomic(directory / SCOPE_FILE, {"questions": list(entries), "answers": list(entries.values())})
    return list(entries)


def _entry(item: str | tuple[str, str]) -> tuple[str, str]:
    question, answer = (item, "") if isinstance(item, str) else item
    return question.strip(), answer.strip()


def read_scope(directory: Path) -> list[str] | None:
    """A version's scope questions, or None when it has none (trained before routing: it answers
    everything)."""
    entries = scope_entries(directory)
    return None if entries is None else [question for question, _ in entries]


def scope_entries(directory: Path) -> list[tuple[str, str]] | None:
    """A version's scope as ``(question, taught answer)`` ("" where not kept); None without one, or
    when it is unreadable (answer everything rather than nothing, as without a scope)."""
    try:
        data = json.loads((directory / SCOPE_FILE).read_text(encoding="utf-8"))
        questions = [str(q) for q in data["questions"]]
        answers = [str(a) for a in data.get("answers", ())]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    if len(answers) != len(questions):
        answers = [""] * len(questions)  # written before answers were kept
    return list(zip(questions, answers, strict=True))


def scope_stamp(directory: Path) -> int | None:
    """When a version's scope file last changed (None: it has none), so readers can keep it."""
    try:
        return (directory / SCOPE_FILE).stat().st_mtime_ns
    except OSError:
        return None
