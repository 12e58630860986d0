"""The plan of the house, checked: packages import each other's public names only, the adapters
subpackages depend on each other one way, only the composition root knows Discord, and no module
outgrows a page or two.

A private module or name (``_x``) belongs to the package that holds it: only modules inside that
package import it, and the package's own tests (``tests/`` mirrors the tree: ``tests/adapters/serving``
tests ``adapters.serving``). Benchmarks that time or patch a private part are listed in
:data:`BENCH_PRIVATE`, each with the part it measures.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("adapters", "bot", "feedback", "ingest", "knowledge")
DOTTED = re.compile(rf"^(?:{'|'.join(PACKAGES)})(?:\.\w+)+$")
MAX_LINES = 400

# Benchmarks that measure a private part: the file and the private modules it reaches.
BENCH_PRIVATE = {
    "bench/prefill_batching.py": {"adapters.serving._engine"},  # swaps prefill_groups for one-by-one
    "bench/serving.py": {"adapters.serving._streaming"},  # turns the loop check off to time it
    # puts back the path before Dec 8 (bf16 prompt weights, no chunked prefill) and the loop check
    "bench/grounded_burst.py": {
        "adapters.serving._engine",
        "adapters.serving._fastpath",
        "adapters.serving._streaming",
    },
}

# The adapters subpackages and what each may import besides adapters' shared modules (errors, prompt,
# _memory, data): model preparation at the bottom, serving on it, training and the gate on serving.
LAYERS = {
    "adapters.registry": set(),
    "adapters.model": set(),
    "adapters.serving": {"adapters.model", "adapters.registry"},
    "adapters.training": {"adapters.model", "adapters.serving", "adapters.registry"},
    "adapters.gate": {"adapters.serving", "adapters.registry"},
}


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py") if ".venv" not in p.parts)


def _module_of(path: Path) -> str:
    """The dotted name a file stands for: a test file counts as a module of the package it mirrors."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "tests":
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_package(dotted: str) -> bool:
    return (ROOT / dotted.replace(".", "/") / "__init__.py").is_file()


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every dotted name ``path`` imports (a module, or a module + "." + a name from it), and every
    string constant that spells one (``monkeypatch.setattr("pkg._mod.x", ...)``, ``-m pkg._mod``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module_of(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and DOTTED.match(node.value):
            yield node.lineno, node.value


def _owner(dotted: str) -> str | None:
    """The package a private module or name in ``dotted`` belongs to (None: nothing private in it)."""
    parts = dotted.split(".")
    for index, part in enumerate(parts):
        if part.startswith("_") and not (part.startswith("__") and part.endswith("__")):
            prefix = ".".join(parts[:index])
            return prefix if _is_package(prefix) else prefix.rpartition(".")[0]
    return None


def _private_imports_across_packages(folders: tuple[str, ...]) -> list[str]:
    found = []
    for path in _sources(*folders):
        if path == Path(__file__).resolve():
            continue  # this file spells private names to test the rule
        here = _module_of(path)
        allowed = BENCH_PRIVATE.get(str(path.relative_to(ROOT)), set())
        for line, dotted in _imports(path):
            if dotted.split(".")[0] not in PACKAGES:
                continue
            owner = _owner(dotted)
            if owner is None or here == owner or here.startswith(owner + "."):
                continue
            if any(dotted == a or dotted.startswith(a + ".") for a in allowed):
                continue
            found.append(f"{path.relative_to(ROOT)}:{line} imports {dotted} (private to {owner})")
    return found


def test_no_package_imports_another_packages_private_parts() -> None:
    assert _private_imports_across_packages((*PACKAGES, "bench")) == []


def test_tests_import_public_names_except_from_the_package_they_mirror() -> None:
    assert _private_imports_across_packages(("tests",)) == []


def _exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return (path / "__init__.py").is_file() or path.with_suffix(".py").is_file()


def test_every_import_names_a_module_of_this_tree() -> None:
    """``from pkg.mod import x`` and ``import pkg.mod`` name a module that exists here (an installed
    checkout elsewhere could otherwise answer for a module this tree moved or removed)."""
    missing = []
    for path in _sources(*PACKAGES, "bench", "tests"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules = [node.module]
            else:
                continue
            missing += [
                f"{path.relative_to(ROOT)}:{node.lineno} imports {module}"
                for module in modules
                if module.split(".")[0] in PACKAGES and not _exists(module)
            ]
    assert missing == []


def test_the_check_sees_a_private_import() -> None:
    """The rule itself: what it flags and what it lets through."""
    assert _owner("adapters.serving._engine.BatchEngine") == "adapters.serving"
    assert _owner("adapters.serving.ModelRuntime") is None
    assert _owner("knowledge.evidence._CJK") == "knowledge"  # a private name: its module's package's
    assert _owner("adapters._memory.release_free_memory") == "adapters"


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and ".".join(parts[:2]) in LAYERS else None


def test_the_adapters_subpackages_depend_on_each_other_one_way() -> None:
    """Each subpackage imports only those below it; the shared modules at the top (errors, prompt,
    _memory) import none of them."""
    wrong = []
    for path in _sources("adapters"):
        here = _package_of(_module_of(path))
        allowed = LAYERS[here] if here is not None else set()
        for line, dotted in _imports(path):
            target = _package_of(dotted)
            if target is not None and target != here and target not in allowed:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {here or _module_of(path)} imports {target}")
    assert wrong == []


@pytest.mark.parametrize("library", ["adapters", "feedback", "ingest", "knowledge"])
def test_only_the_composition_root_knows_discord_and_the_bot(library: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {dotted}"
        for path in _sources(library)
        for line, dotted in _imports(path)
        if dotted.split(".")[0] in ("discord", "bot")
    ]
    assert wrong == []


def test_no_module_is_over_400_lines() -> None:
    """Split a module that passes ~400 lines (the native kernel source, C++, is not Python)."""
    long = {
        str(path.relative_to(ROOT)): count
        for path in _sources(*PACKAGES, "bench", "tests")
        if (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}
