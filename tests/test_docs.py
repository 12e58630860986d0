"""What the README and the docs say, checked against the code: the commands the README lists, the
files and names the docs cite, and what serves the adapters."""

from __future__ import annotations

import argparse
import ast
import importlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "bench" / "README.md",
    ROOT / "tests" / "README.md",
]
PACKAGES = ("adapters", "bot", "feedback", "ingest", "knowledge")
# A backticked path in the repository (data-dir paths such as `adapters/guilds/<id>/vNNNN` have
# placeholders and are left out), or a dotted name of one of loopbot's packages.
PATH = re.compile(r"`((?:adapters|bot|knowledge|feedback|ingest|bench|tests|docs)/[\w./-]+)(?:::\w+)?`")
USECASES = ("asking", "feedback", "knowledge", "privacy", "training", "pairs", "serving", "limits", "errors")
DOTTED = re.compile(rf"`((?:{'|'.join({*PACKAGES, *USECASES})})(?:\.\w+)+)[`(]")
FILE_SUFFIXES = {"py", "md", "json", "jsonl", "csv", "png", "gz", "txt", "db"}
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*prefix, name))
            return
    yield prefix


def test_the_readme_lists_every_command() -> None:
    from bot.cli import build_parser

    rows = [
        line
        for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("| `loopbot ")
    ]
    missing = [
        " ".join(command)
        for command in _commands(build_parser())
        if not any(
            f"loopbot {command[0]}" in row and all(re.search(rf"\b{word}\b", row) for word in command[1:])
            for row in rows
        )
    ]
    assert missing == [], f"commands missing from the README's table: {missing}"


def _resolves(dotted: str) -> bool:
    """Whether ``dotted`` is a module, or a module's attribute (of an attribute...)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:end]))
        except ImportError:
            continue
        if not Path(getattr(target, "__file__", "") or "").resolve().is_relative_to(ROOT):
            return False  # found elsewhere (another checkout's install), not in this tree
        try:
            for name in parts[end:]:
                target = getattr(target, name)
        except AttributeError:
            return False
        return True
    return False


def _cited(doc: Path) -> Iterator[str]:
    text = doc.read_text(encoding="utf-8")
    for match in PATH.finditer(text):
        path = match.group(1).rstrip(".")
        if (ROOT / path).exists():
            continue
        # `ingest/chunking.text_length`: a name in a module
        module, _, name = path.removesuffix(".py").rpartition(".")
        if not (module and _resolves(f"{module.replace('/', '.')}.{name}")):
            yield path
    for match in DOTTED.finditer(text):
        if match.group(1).rpartition(".")[2] in FILE_SUFFIXES:
            continue  # a file's name (`privacy.py`), not a module's
        # The use-case table names functions by their module in bot/usecases (`serving.promote`).
        if not any(_resolves(prefix + match.group(1)) for prefix in ("", "bot.usecases.")):
            yield match.group(1)
    for match in LINK.finditer(text):
        target = match.group(1)
        if "://" not in target and not (doc.parent / target).exists():
            yield target


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_what_the_docs_cite_exists(doc: Path) -> None:
    assert sorted(set(_cited(doc))) == []


def _module_docstrings() -> Iterator[tuple[str, str]]:
    for path in sorted((ROOT / "adapters").rglob("*.py")):
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        yield str(path.relative_to(ROOT)), docstring


def test_nothing_says_peft_serves_the_adapters() -> None:
    """Serving applies the adapters through loopbot's own LoRA bank (adapters/serving/_lora.py): peft
    only trains them. The README said "through transformers + peft", a docstring "before peft sees them"."""
    claim = re.compile(
        r"transformers \+ peft|peft sees|before peft|served (?:by|through) peft", re.IGNORECASE
    )
    said = [name for name, text in _module_docstrings() if claim.search(text)]
    said += [str(doc.relative_to(ROOT)) for doc in DOCS if claim.search(doc.read_text(encoding="utf-8"))]
    assert said == []
