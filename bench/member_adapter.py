"""A member's own adapter: stacked on the guild's, or one adapter beside it? Measured, not assumed.

The guild's adapter is trained on shared corrections (facts everyone may know); a member has private
corrections of their own. Two ways to serve that member's private answers:

* **stacked**: a member adapter trained on the member's pairs alone, on the bare base, its LoRA delta
  added to the guild adapter's at serving time (what loopbot did until Nov 25);
* **stacked, trained over the guild's**: the same, but trained with the guild's adapter applied and
  frozen (``train_adapter(beneath=...)``), so it learns in the stack it is served in;
* **... keeping its pairs** (what loopbot does): and with the guild's pairs beside the member's
  (``kept_guild_pairs``: at most two per member pair), so the member's LoRA is told to keep them;
* **beside**: one adapter per member trained on the guild's pairs *and* the member's, served instead of
  the guild's.

For each: the member's facts and the guild's facts answered in the member's private answers (served
model, no retrieval), both asked in other words too, the regression set, and what training the member
costs; routed as served (each adapter answers only questions near its own, adapters/serving/_routing.py) and
unrouted (every adapter answers everything, as before routing). Facts come from bench/data/learning_facts.json (first 10: the guild's, next 8: the member's), with
the default recipe (16 anchors, 5 passes, rephrased corrections).

    python bench/member_adapter.py

Writes bench/results/member_adapter.json.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine, write

FACTS = [
    tuple(f)
    for f in json.loads((Path(__file__).parent / "data" / "learning_facts.json").read_text())["facts"]
]
GUILD_FACTS, MEMBER_FACTS = FACTS[:10], FACTS[10:18]


def _pairs(facts: list[tuple], prefix: str) -> list[Any]:
    from types import SimpleNamespace

    return [
        SimpleNamespace(id=f"{prefix}{i}", kind="corrected", instruction=q, input="", output=a)
        for i, (q, a, _key, _other) in enumerate(facts)
    ]


def _score(
    runtime: Any, adapter: Any, facts: list[tuple], column: int, system_prompt: str, route: Any
) -> float:
    futures = [
        runtime.submit(
            [{"role": "user", "content": fact[column]}],
            system_prompt=system_prompt,
            adapter=route(adapter, fact[column]),
            temperature=0.0,
            max_new_tokens=32,
        )
        for fact in facts
    ]
    right = sum(fact[2].lower() in f.result().text.lower() for fact, f in zip(facts, futures, strict=True))
    return round(right / len(facts), 3)


def main() -> int:
    from adapters.gate import accuracy, run_regression
    from adapters.registry import AdapterRegistry
    from adapters.serving import AdapterChoice, ModelRuntime, routed
    from adapters.training import (
        anchor_examples,
        anchor_questions,
        examples_from_pairs,
        rephrased_examples,
        train_adapter,
    )
    from bot.settings import load_settings
    from bot.usecases.pairs import kept_guild_pairs
    from bot.usecases.training import training_options
    from bot.wiring import build_routing, resolve_model_base

    settings = load_settings()
    base = resolve_model_base(settings)
    system_prompt = settings.model.system_prompt
    options = training_options(settings)
    load = [round(x, 2) for x in os.getloadavg()]
    runtime = ModelRuntime.load(base, device="cpu", threads=settings.model.threads)
    result: dict[str, Any] = {"machine": machine(), "load_average_before": load}
    with tempfile.TemporaryDirectory(prefix="member-adapter-") as scratch:
        anchors = anchor_examples(runtime, anchor_questions(settings.train.anchors), system_prompt)

        versions: dict[str, Any] = {}

        def train(
            name: str, pairs: list[Any], beneath: str | None = None, kept: list[Any] | None = None
        ) -> tuple[str, float]:
            # as the product trains: ``kept`` (the guild's pairs beside a member's) are not rephrased
            examples = examples_from_pairs([*pairs, *(kept or [])], system_prompt)
            examples += rephrased_examples(runtime, pairs, system_prompt)
            started = time.perf_counter()
            versions[name] = train_adapter(
                AdapterRegistry(Path(scratch) / name),
                base_model=base,
                examples=examples,
                anchors=anchors,
                options=options,
                beneath=versions[beneath] if beneath else None,
                show_progress=True,
            )
            seconds = time.perf_counter() - started
            runtime.load_adapter(name, versions[name].path)
            return name, round(seconds, 1)

        guild_pairs, member_pairs = _pairs(GUILD_FACTS, "g"), _pairs(MEMBER_FACTS, "m")
        guild, guild_s = train("guild", guild_pairs)
        member, member_s = train("member", member_pairs)
        over, over_s = train("over", member_pairs, beneath="guild")
        kept = kept_guild_pairs(guild_pairs, versions["guild"], len(member_pairs))
        keeping, keeping_s = train("keeping", member_pairs, beneath="guild", kept=kept)
        beside, beside_s = train("beside", guild_pairs + member_pairs)
        result["guild_training_s"] = guild_s
        served = {
            "guild alone": AdapterChoice((guild,)),
            "stacked": AdapterChoice((guild, member)),
            "stacked, trained over the guild's": AdapterChoice((guild, over)),
            "stacked, trained over the guild's, keeping its pairs": AdapterChoice((guild, keeping)),
            "beside": AdapterChoice((beside,)),
        }
        costs = dict(zip(served, (0.0, member_s, over_s, keeping_s, beside_s), strict=True))
        # As served (each adapter answers the questions near its own: adapters/serving/_routing.py), and
        # every adapter answering every question (before routing).
        routes = {"routed": routed(runtime, build_routing(settings)), "unrouted": routed(runtime, None)}
        for label, adapter in served.items():
            row: dict[str, Any] = {"member_training_s": costs[label]}
            for how, route in routes.items():
                row[how] = {
                    "member_facts": _score(runtime, adapter, MEMBER_FACTS, 0, system_prompt, route),
                    "member_facts_other_words": _score(
                        runtime, adapter, MEMBER_FACTS, 3, system_prompt, route
                    ),
                    "guild_facts": _score(runtime, adapter, GUILD_FACTS, 0, system_prompt, route),
                    "guild_facts_other_words": _score(runtime, adapter, GUILD_FACTS, 3, system_prompt, route),
                    "regression": round(
                        accuracy(
                            run_regression(runtime, adapter=adapter, system_prompt=system_prompt, route=route)
                        ),
                        3,
                    ),
                }
            result[label] = row
            print(label, json.dumps(row), flush=True)
    runtime.close()
    write("member_adapter", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
