"""Answer-quality benchmark: the whole answer chain on a realistic community knowledge base.

    python bench/answer_quality.py [--set classic|real] [--model gptq|fp32|both] [--limit N] [--name NAME]

``--set real`` (``bench/data/answer_quality_real``) is documents as communities write them: a
hard-wrapped markdown wiki, a handbook PDF (written here from ``handbook.txt`` by ``bench/_pdf.py``,
so nothing binary is committed) and an HTML events page; short and colloquial questions; questions
about the community that no document answers; clearly general questions. It reports right (a key
anywhere in what the member reads), right without a hedge, unanswerable honest (says it has nothing
and invents no number or name), invented specifics and garbled quotes (a quoted sentence that spans
two sections or stops mid-sentence), and, for the general questions, how many got a general answer.
Writes ``bench/results/answer_quality_real.json`` by default.

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
REAL = Path(__file__).resolve().parent / "data" / "answer_quality_real"
GUILD = "1001"


def load_questions(limit: int | None = None, data: Path = DATA) -> list[dict]:
    """The benchmark's questions (answerable first, in file order), at most ``limit`` of each kind."""
    rows = [
        json.loads(line)
        for line in (data / "questions.jsonl").read_text(encoding="utf-8").splitlines()
        if line
    ]
    for row in rows:
        row.setdefault("lang", "en")
        row.setdefault("kind", "answerable" if row["answerable"] else "unanswerable")
    if limit is None:
        return rows
    answerable = [r for r in rows if r["answerable"]][:limit]
    return answerable + [r for r in rows if not r["answerable"]][: max(1, limit // 3)]


def real_documents(into: Path) -> tuple[list[Path], list[str], list[str]]:
    """The real-documents set written to ``into`` (the PDF built from its text): the paths to
    ingest, the documents' texts as the judge reads them, and their headings."""
    from _pdf import handbook_pages, write_pdf
    from bs4 import BeautifulSoup

    handbook = (REAL / "handbook.txt").read_text(encoding="utf-8")
    write_pdf(handbook_pages(handbook), into / "handbook.pdf")
    html = (REAL / "events.html").read_text(encoding="utf-8")
    for name in ("wiki.md", "events.html"):
        (into / name).write_text((REAL / name).read_text(encoding="utf-8"), encoding="utf-8")
    soup = BeautifulSoup(html, "html.parser")
    for row in soup.find_all("tr"):  # a table row on one line, as the page shows it
        row.replace_with(
            " | ".join(cell.get_text(" ", strip=True) for cell in row.find_all(["th", "td"])) + "\n"
        )
    wiki = (REAL / "wiki.md").read_text(encoding="utf-8")
    headings = [h.get_text(" ", strip=True) for h in soup.find_all(["h1", "h2", "h3"])]
    headings += [line.lstrip("# ").strip() for line in wiki.splitlines() if line.startswith("#")]
    # The handbook's headings: its short lines that end no sentence (the judge's own simple rule).
    headings += [
        line.strip()
        for line in handbook.splitlines()
        if line.strip() and len(line) < 50 and line.strip()[-1] not in ".,;:!?" and line.strip() != "\f"
    ]
    texts = [wiki, handbook.replace("\f", ""), soup.get_text("\n")]
    return [into / "wiki.md", into / "handbook.pdf", into / "events.html"], texts, headings


def real_row(q: dict, text: str, sources: list[str], documents: list[str], headings: list[str]) -> dict:
    """One real-set answer judged: right, hedged, honest, invented specifics, garbled quotes."""
    from adapters.prompt import GENERAL_KNOWLEDGE
    from knowledge.quality import (
        garbled_quote,
        has_key,
        invented_specifics,
        is_hedged,
        quoted_pieces,
        says_nothing_found,
    )

    invented = [] if q["kind"] == "general" else invented_specifics(text, "\n".join(documents), q["question"])
    right = q["answerable"] and has_key(text, q["keys"])
    return {
        "id": q["id"],
        "kind": q["kind"],
        "answerable": q["answerable"],
        "question": q["question"],
        "answer": text,
        "sources": sources,
        "expected_source": q["source"],
        "right": right,
        "right_plain": right and not is_hedged(text),
        "honest": (not q["answerable"]) and says_nothing_found(text) and not invented,
        "general_answer": GENERAL_KNOWLEDGE in text,
        "invented": invented,
        "garbled": [p for p in quoted_pieces(text) if garbled_quote(p, documents, headings)],
    }


def real_score(rows: list[dict]) -> dict:
    """The real set's figures, overall and per kind of question."""

    def share(subset: list[dict], key: str) -> float:
        return round(sum(bool(r[key]) for r in subset) / max(1, len(subset)), 3)

    answerable = [r for r in rows if r["answerable"]]
    community = [r for r in rows if r["kind"] == "unanswerable"]
    general = [r for r in rows if r["kind"] == "general"]
    return {
        "answerable": len(answerable),
        "right": share(answerable, "right"),
        "right_plain": share(answerable, "right_plain"),
        "right_by_kind": {
            kind: share([r for r in answerable if r["kind"] == kind], "right")
            for kind in ("normal", "short", "colloquial")
        },
        "unanswerable": len(community),
        "unanswerable_honest": share(community, "honest"),
        "general": len(general),
        "general_answered": share(general, "general_answer"),
        "invented_specifics": sum(len(r["invented"]) for r in rows),
        "garbled_quotes": sum(len(r["garbled"]) for r in rows),
    }


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


def run(model: str, questions: list[dict], kb, settings, judge=None) -> dict:  # type: ignore[no-untyped-def]
    from adapters.model import default_model_dir, plain_model_dir
    from adapters.serving import ModelRuntime
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
            if judge is not None:  # the real-documents set
                rows.append(real_row(q, text, [s.citation() for s in answer.sources], *judge))
                ok = rows[-1]["right"] or rows[-1]["honest"] or rows[-1]["general_answer"]
                print(f"{q['id']} {'OK ' if ok else '-- '}{text[:140]!r}")
                continue
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
    return {"scores": real_score(rows) if judge else score(rows), "seconds": round(seconds, 1), "rows": rows}


def evidence_only(questions: list[dict], kb, settings, judge=None) -> dict:  # type: ignore[no-untyped-def]
    """No model: for each answerable question, whether the passages the chain would use include the
    expected document, and whether the quoted sentences (what a member reads under or instead of the
    model's sentence) hold the key. Seconds per run, so the retrieval and quoting can be tuned fast."""
    from transformers import AutoTokenizer

    from adapters.model import default_model_dir
    from bot.wiring import build_answer_service
    from knowledge.quality import garbled_quote, has_key, quoted_pieces
    from knowledge.quoting import choose_quote

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir(settings.models_dir))
    # No model, but the model's token counts: the context fits the same passages as when answering.
    counter = types.SimpleNamespace(count_tokens=lambda text: len(tokenizer(text).input_ids))
    service = build_answer_service(settings, kb=kb, runtime=counter)
    rows = []
    unanswered: list[bool] = []
    stated: list[bool] = []  # an unanswerable question's closest sentence stated as its answer
    for q in questions:
        used = service.fit_context(
            service.select(service.retrieve(q["question"], user_id=None, guild_id=GUILD), q["question"])
        )
        if not q["answerable"]:
            unanswered.append(not used)
            if used and q["kind"] != "general":
                wrong = choose_quote(q["question"], [h.chunk.text for h in used], kb.similarities)
                stated.append(bool(wrong and wrong.answers))
                if stated[-1]:
                    print(f"{q['id']} stated for an unanswerable one | {q['question']}: {wrong.text[:120]!r}")
            continue
        chosen = choose_quote(q["question"], [h.chunk.text for h in used], kb.similarities)
        quote = chosen.text if chosen else ""
        rows.append(
            {
                "id": q["id"],
                "lang": q["lang"],
                "question": q["question"],
                "source_used": any(q["source"] in h.chunk.source for h in used),
                "key_in_passages": any(has_key(h.chunk.text, q["keys"]) for h in used),
                "key_in_quote": has_key(quote, q["keys"]),
                "quote_answers": bool(chosen and chosen.answers),
                "key_in_answering_quote": bool(chosen and chosen.answers) and has_key(quote, q["keys"]),
                "quote": quote,
                "garbled": bool(judge) and any(garbled_quote(p, *judge) for p in quoted_pieces(f"“{quote}”")),
            }
        )
    shares = {
        lang: {
            key: round(sum(r[key] for r in subset) / max(1, len(subset)), 3)
            for key in (
                "source_used",
                "key_in_passages",
                "key_in_quote",
                "quote_answers",
                "key_in_answering_quote",
            )
        }
        for lang, subset in (
            ("all", rows),
            *((lg, [r for r in rows if r["lang"] == lg]) for lg in ("en", "ja")),
        )
    }
    shares["unanswerable_nothing_used"] = round(sum(unanswered) / max(1, len(unanswered)), 3)
    shares["garbled"] = sum(r["garbled"] for r in rows)
    shares["unanswerable_stated"] = sum(stated)
    return {"scores": shares, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["gptq", "fp32", "both"], default="both")
    parser.add_argument(
        "--limit", type=int, default=None, help="at most N answerable questions (and N/3 others)"
    )
    parser.add_argument("--set", choices=["classic", "real"], default="classic", dest="data_set")
    parser.add_argument("--name", default=None, help="results file name (default: by set)")
    parser.add_argument(
        "--evidence-only", action="store_true", help="no model: the passages used and the quoted sentences"
    )
    args = parser.parse_args()

    from bot.settings import load_settings
    from bot.wiring import build_knowledge_base
    from ingest import ingest_paths

    settings = load_settings()
    real = args.data_set == "real"
    args.name = args.name or ("answer_quality_real" if real else "answer_quality")
    questions = load_questions(args.limit, REAL if real else DATA)
    kb_settings = settings.model_copy(update={"data_dir": Path(tempfile.mkdtemp(prefix="loopbot-aq-"))})
    kb = build_knowledge_base(kb_settings)
    load = machine()["load_average"]
    judge = None
    paths = [DATA / "kb"]
    if real:
        paths, documents, headings = real_documents(kb_settings.data_dir)
        judge = (documents, headings)
    try:
        report = ingest_paths(kb, paths, scope="community", guild_id=GUILD)
        if args.evidence_only:
            found = evidence_only(questions, kb, settings, judge)
            for row in found["rows"]:
                if not row["key_in_quote"]:
                    print(f"{row['id']} source {'ok' if row['source_used'] else '--'} | {row['question']}")
                    print(f"      quote: {row['quote'][:160]!r}")
                elif not row["quote_answers"]:
                    print(f"{row['id']} hedged | {row['question']}\n      quote: {row['quote'][:160]!r}")
            print(json.dumps(found["scores"], indent=1))
            write(args.name, {"questions": len(questions), "load_average_before": load, **found})
            return
        results = {
            m: run(m, questions, kb, settings, judge)
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
