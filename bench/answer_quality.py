"""Answer-quality benchmark: the whole answer chain on a realistic community knowledge base.

    python bench/answer_quality.py [--model gptq|fp32|both] [--limit N] [--name NAME]

Ingests ``bench/data/answer_quality/kb`` (9 documents, English and Japanese) as one guild's
community posts, then asks every question of ``questions.jsonl`` through the product's own answer
service (retrieval, relevance floor, prompt, decoding, as configured by ``LOOPBOT_*``). Reports, per
model and language: answerable questions answered correctly (a key in the answer), unanswerable
ones handled honestly (the answer says the knowledge base has nothing, instead of inventing), and
answers that echo the context markup or list passages. Judged by ``knowledge.quality``.
Writes ``bench/results/<name>.json`` (default ``answer_quality``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "answer_quality"
GUILD = "1001"


def load_questions(limit: int | None = None) -> list[dict]:
    """The benchmark's questions (answerable first, in file order), at most ``limit`` of each kind."""
    rows = [
        json.loads(line)
        for line in (DATA / "questions.jsonl").read_text(encoding="utf-8").splitlines()
        if line
    ]
    if limit is None:
        return rows
    answerable = [r for r in rows if r["answerable"]][:limit]
    return answerable + [r for r in rows if not r["answerable"]][: max(1, limit // 3)]


def score(rows: list[dict]) -> dict:
    """Shares over the judged rows, overall and per language."""

    def shares(subset: list[dict]) -> dict:
        answerable = [r for r in subset if r["answerable"]]
        unanswerable = [r for r in subset if not r["answerable"]]
        return {
            "answerable": len(answerable),
            "answerable_correct": round(sum(r["correct"] for r in answerable) / max(1, len(answerable)), 3),
            "answerable_correct_own_words": round(
                sum(r["correct_own_words"] for r in answerable) / max(1, len(answerable)), 3
            ),
            "unanswerable": len(unanswerable),
            "unanswerable_honest": round(
                sum(r["honest"] for r in unanswerable) / max(1, len(unanswerable)), 3
            ),
            "markup_echoes": sum(r["echo"] for r in subset),
            "unanswerable_cited_sources": round(
                sum(bool(r["sources"]) for r in unanswerable) / max(1, len(unanswerable)), 3
            ),
        }

    return {
        "all": shares(rows),
        **{lang: shares([r for r in rows if r["lang"] == lang]) for lang in ("en", "ja")},
    }


def run(model: str, questions: list[dict], kb, settings) -> dict:  # type: ignore[no-untyped-def]
    from adapters.default_model import default_model_dir, plain_model_dir
    from adapters.runtime import ModelRuntime
    from bot.wiring import build_answer_service
    from knowledge.quality import echoes_markup, has_key, own_words, says_nothing_found

    path = default_model_dir(settings.models_dir) if model == "gptq" else plain_model_dir(settings.models_dir)
    rows = []
    with ModelRuntime.load(
        path,
        device="cpu",
        threads=settings.model.threads or 2,
        dtype=settings.model.dtype,
        max_new_tokens=settings.model.max_new_tokens,
        temperature=0.0,
        system_prompt=settings.model.system_prompt,
        repetition_penalty=settings.model.repetition_penalty,
    ) as runtime:
        service = build_answer_service(settings, kb=kb, runtime=runtime)
        started = time.perf_counter()
        for q in questions:
            answer = service.answer(q["question"], user_id=None, guild_id=GUILD)
            text = answer.answer
            rows.append(
                {
                    "id": q["id"],
                    "lang": q["lang"],
                    "answerable": q["answerable"],
                    "question": q["question"],
                    "answer": text,
                    "sources": [s.source for s in answer.sources],
                    "expected_source": q["source"],
                    "correct": q["answerable"] and has_key(text, q["keys"]),
                    # The model's own sentence, without the quoted passage sentence under or instead of it.
                    "correct_own_words": q["answerable"] and has_key(own_words(text), q["keys"]),
                    "honest": (not q["answerable"]) and says_nothing_found(text),
                    "echo": echoes_markup(text),
                }
            )
            print(f"{q['id']} {'OK ' if rows[-1]['correct'] or rows[-1]['honest'] else '-- '}{text[:100]!r}")
        seconds = time.perf_counter() - started
    return {"scores": score(rows), "seconds": round(seconds, 1), "rows": rows}


def evidence_only(questions: list[dict], kb, settings) -> dict:  # type: ignore[no-untyped-def]
    """No model: for each answerable question, whether the passages the chain would use include the
    expected document, and whether the quoted sentences (what a member reads under or instead of the
    model's sentence) hold the key. Seconds per run, so the retrieval and quoting can be tuned fast."""
    from transformers import AutoTokenizer

    from adapters.default_model import default_model_dir
    from bot.wiring import build_answer_service
    from knowledge.evidence import best_sentences
    from knowledge.quality import has_key

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir(settings.models_dir))
    # No model, but the model's token counts: the context fits the same passages as when answering.
    counter = types.SimpleNamespace(count_tokens=lambda text: len(tokenizer(text).input_ids))
    service = build_answer_service(settings, kb=kb, runtime=counter)
    rows = []
    for q in questions:
        if not q["answerable"]:
            continue
        used = service.fit_context(
            service.select(service.retrieve(q["question"], user_id=None, guild_id=GUILD), q["question"])
        )
        quote = best_sentences(q["question"], [h.chunk.text for h in used], kb.similarities) or ""
        rows.append(
            {
                "id": q["id"],
                "lang": q["lang"],
                "question": q["question"],
                "source_used": any(q["source"] in h.chunk.source for h in used),
                "key_in_passages": any(has_key(h.chunk.text, q["keys"]) for h in used),
                "key_in_quote": has_key(quote, q["keys"]),
                "quote": quote,
            }
        )
    shares = {
        lang: {
            key: round(sum(r[key] for r in subset) / max(1, len(subset)), 3)
            for key in ("source_used", "key_in_passages", "key_in_quote")
        }
        for lang, subset in (
            ("all", rows),
            *((lg, [r for r in rows if r["lang"] == lg]) for lg in ("en", "ja")),
        )
    }
    return {"scores": shares, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["gptq", "fp32", "both"], default="both")
    parser.add_argument(
        "--limit", type=int, default=None, help="at most N answerable questions (and N/3 others)"
    )
    parser.add_argument("--name", default="answer_quality")
    parser.add_argument(
        "--evidence-only", action="store_true", help="no model: the passages used and the quoted sentences"
    )
    args = parser.parse_args()

    from bot.settings import load_settings
    from bot.wiring import build_knowledge_base
    from ingest import ingest_paths

    settings = load_settings()
    questions = load_questions(args.limit)
    kb_settings = settings.model_copy(update={"data_dir": Path(tempfile.mkdtemp(prefix="loopbot-aq-"))})
    kb = build_knowledge_base(kb_settings)
    load = machine()["load_average"]
    try:
        report = ingest_paths(kb, [DATA / "kb"], scope="community", guild_id=GUILD)
        if args.evidence_only:
            found = evidence_only(questions, kb, settings)
            for row in found["rows"]:
                if not row["key_in_quote"]:
                    print(f"{row['id']} source {'ok' if row['source_used'] else '--'} | {row['question']}")
                    print(f"      quote: {row['quote'][:160]!r}")
            print(json.dumps(found["scores"], indent=1))
            write(args.name, {"questions": len(questions), "load_average_before": load, **found})
            return
        results = {
            m: run(m, questions, kb, settings)
            for m in (["gptq", "fp32"] if args.model == "both" else [args.model])
        }
    finally:
        kb.close()
    write(
        args.name,
        {
            "questions": len(questions),
            "chunks": len(report.chunks),
            "settings": {
                "top_k": settings.kb.top_k,
                "min_relevance": settings.kb.min_relevance,
                "relevance_margin": settings.kb.relevance_margin,
                "max_passages": settings.kb.max_passages,
                "max_new_tokens": settings.model.max_new_tokens,
                "max_sentences": settings.model.max_sentences,
                "repetition_penalty": settings.model.repetition_penalty,
                "prompt_version": __import__("adapters.prompt", fromlist=["PROMPT_VERSION"]).PROMPT_VERSION,
            },
            "scores": {m: r["scores"] for m, r in results.items()},
            "seconds": {m: r["seconds"] for m, r in results.items()},
            "load_average_before": load,
            "machine": machine(),
            "rows": {m: r["rows"] for m, r in results.items()},
        },
    )


if __name__ == "__main__":
    main()
