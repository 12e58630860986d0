"""Shared bits of the model benchmarks: result writing, RAG probe prompts, environment setup."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
# On a shared 2-core machine OpenMP's default spin-waiting makes 2-thread torch ops 10-20x slower
# (measured: 142 ms vs 7 ms for one small matmul under load); passive waiting avoids that.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS = Path(__file__).resolve().parent / "results"

# Community-style facts hidden among unrelated passages: does the model answer from its context?
RAG_CASES = [
    (
        "Aiko: Mochi sneezes in the morning, usually right after breakfast; the vet said it is a mild allergy.",
        "When does Mochi sneeze?",
        "morning",
    ),
    (
        "Ben: the board game club meets every Thursday at 7 pm in the library basement.",
        "What day does the board game club meet?",
        "thursday",
    ),
    (
        "Chloe: Luna only eats salmon-flavoured wet food since her dental surgery in May.",
        "What food does Luna eat?",
        "salmon",
    ),
    (
        "Farid: the community garden's tool shed code is 4512; lock it when you leave.",
        "What is the code of the tool shed?",
        "4512",
    ),
    (
        "Grace: Pepper the parrot learned to say 'hello Grace' in two weeks of daily practice.",
        "What did Pepper the parrot learn to say?",
        "hello",
    ),
    (
        "Hiro: our Discord server's movie night is on the last Friday of each month.",
        "When is movie night?",
        "friday",
    ),
]

FILLER = [
    "The json module exposes an API familiar to users of the standard library marshal and pickle modules. "
    "It can serialize Python objects to text and parse text back into Python objects.",
    "Argument parsers hold all the information necessary to parse the command line into Python data types. "
    "Positional arguments and optional flags are declared with add_argument.",
    "A logger has a level and a list of handlers; records below the level are dropped, the others are passed "
    "to each handler, which formats and emits them.",
    "The sqlite3 module provides a SQL interface compliant with the DB-API 2.0 specification; a connection "
    "represents the database and a cursor runs statements.",
    "Pathlib offers classes representing filesystem paths with semantics appropriate for different operating "
    "systems; pure paths provide purely computational operations without I/O.",
    "An event loop runs asynchronous tasks and callbacks, performs network IO operations, and runs "
    "subprocesses; applications normally use the high-level asyncio functions.",
]


def rag_messages(case_index: int, filler_repeats: int = 1) -> list[dict[str, str]]:
    """One RAG-shaped user message: passages (the fact among fillers), then the question."""
    from adapters.prompt import format_context, question_messages

    fact, question, _ = RAG_CASES[case_index]
    passages = FILLER * filler_repeats
    passages = passages[: case_index % len(passages)] + [fact] + passages[case_index % len(passages) :]
    # Laid out by the product's own prompt module, as the answer chain lays out its passages.
    context = format_context(passages)
    return question_messages(question, context)


def machine() -> dict[str, Any]:
    """Where the figures come from."""
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "load_average": os.getloadavg(),
    }


def write(name: str, data: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` and print it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(data, indent=2, ensure_ascii=False))
    return path


def models_dir() -> Path:
    """The models dir from settings (LOOPBOT_DATA_DIR), or ``--models DIR``."""
    if "--models" in sys.argv:
        return Path(sys.argv[sys.argv.index("--models") + 1])
    from bot.settings import load_settings

    return load_settings().models_dir
