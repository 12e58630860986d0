"""Quality of the 4-bit default model against the unquantized one, same questions, same prompt.

Measures (1) regression-set accuracy (correct / gradable) with the bot's default system prompt,
(2) RAG probe accuracy: a community fact among unrelated numbered passages, ~300-900 tokens, and
(3) divergence from the fp32 model on its own greedy regression answers (teacher-forced top-1
agreement and KL per token), which varies far less than 14 right-or-wrong answers.
Each model is served as the bot serves it (``dtype=auto``: the GPTQ model in bf16 on CPU).
Run: ``python bench/quantization_quality.py [--models DIR] [--divergence-only]`` (the default model
must be prepared; ``--divergence-only``: (3) alone, ~6 min).
Writes bench/results/quantization_quality.json and one regression CSV per model.
"""

from __future__ import annotations

import json
import sys
import time

from _common import RAG_CASES, RESULTS, machine, models_dir, rag_messages, write


def evaluate(path, label: str) -> dict:
    from adapters.gate import accuracy, core_regression_questions, run_regression, write_regression_csv
    from adapters.serving import ModelRuntime
    from bot.settings import DEFAULT_SYSTEM_PROMPT

    started = time.perf_counter()
    with ModelRuntime.load(path, device="cpu", threads=2, system_prompt=DEFAULT_SYSTEM_PROMPT) as runtime:
        results = run_regression(
            runtime, adapter=None, questions=core_regression_questions(), system_prompt=DEFAULT_SYSTEM_PROMPT
        )
        write_regression_csv(results, RESULTS / f"regression_{label}.csv")
        rag = []
        for i, (_, question, keyword) in enumerate(RAG_CASES):
            for repeats in (1, 3):
                answer = runtime.generate(rag_messages(i, repeats), max_new_tokens=40, temperature=0.0).text
                rag.append(
                    {
                        "question": question,
                        "filler_repeats": repeats,
                        "answer": answer,
                        "correct": keyword in answer.lower(),
                    }
                )
    gradable = [r for r in results if r.correct is not None]
    return {
        "regression_accuracy": round(accuracy(results), 3),
        "regression_correct": sum(bool(r.correct) for r in gradable),
        "regression_gradable": len(gradable),
        "rag_accuracy": round(sum(r["correct"] for r in rag) / len(rag), 3),
        "rag": rag,
        "seconds": round(time.perf_counter() - started, 1),
    }


def divergence(models) -> dict:
    from adapters.gate import divergence_from_reference, regression_conversations
    from adapters.model import default_model_dir, load_base_model, plain_model_dir
    from adapters.serving import install_fast_paths as install
    from bot.settings import DEFAULT_SYSTEM_PROMPT

    conversations = regression_conversations(DEFAULT_SYSTEM_PROMPT)
    reference, tokenizer = load_base_model(plain_model_dir(models), device="cpu", dtype="float32")
    out = {}
    for label, path, dtype, fast, steps in (
        ("plain_bf16", plain_model_dir(models), "bfloat16", False, None),
        ("gptq_4bit_bf16 (served: prompt forward)", default_model_dir(models), "auto", True, None),
        (
            "gptq_4bit_bf16 (served: decode steps, native, torch's int4 kernel)",
            default_model_dir(models),
            "auto",
            True,
            "native",
        ),
        (
            "gptq_4bit_bf16 (served: decode steps, native, int16 activations)",
            default_model_dir(models),
            "auto",
            True,
            16,
        ),
        (
            "gptq_4bit_bf16 (decode steps, native, int8 activations)",
            default_model_dir(models),
            "auto",
            True,
            8,
        ),
        (
            "gptq_4bit_bf16 (decode steps written out in Python)",
            default_model_dir(models),
            "auto",
            True,
            "python",
        ),
        ("gptq_4bit_bf16 int4 kernel only", default_model_dir(models), "auto", False, None),
        ("gptq_4bit_fp32", default_model_dir(models), "float32", False, None),
    ):
        model, _ = load_base_model(path, device="cpu", dtype=dtype)
        if fast:  # as the runtime serves it (adapters/serving/_fastpath.py)
            install(model)
        native = steps in ("native", 8, 16)
        score = (
            decode_steps(model, native=native, integer_bits=steps if steps in (8, 16) else None)
            if steps
            else None
        )
        d = divergence_from_reference(model, reference, tokenizer, conversations, score=score)
        out[label] = {"agreement": round(d.agreement, 4), "kl": round(d.kl, 4), "tokens": d.tokens}
        del model
    return out


def decode_steps(model, native: bool, integer_bits: int | None = None):
    """Scores answers as the runtime generates them: the prompt in one forward, then one decode step
    per answer token (``LlamaDecode``, native kernels or Python, the engine's growing cache). Native
    steps multiply with torch's int4 kernel, or with ``integer_bits`` activations (8 or 16)."""
    import torch

    from adapters.serving import LlamaDecode, growing_cache

    decode = LlamaDecode.for_model(model, native=native)
    assert decode is not None and decode.native is native
    if native:
        decode.set_integer_rows(64 if integer_bits else 0, integer_bits or 16)

    def score(ids, prompt_length: int):
        cache = growing_cache(model.config)
        out = model(input_ids=ids[:, :prompt_length], cache=cache, use_cache=True, logits_to_keep=1)
        logits = [out.logits[0, -1]]
        mask = torch.ones(1, prompt_length, dtype=torch.long)
        for position in range(prompt_length, ids.shape[1] - 1):
            mask = torch.cat([mask, mask.new_ones(1, 1)], 1)
            step = decode(ids[:, position : position + 1], torch.tensor([[position]]), mask, cache)
            logits.append(step[0])
        return torch.stack(logits)

    return score


def main() -> None:
    from adapters.model import default_model_dir, is_prepared, plain_model_dir

    models = models_dir()
    gptq = default_model_dir(models)
    if not is_prepared(gptq):
        raise SystemExit(f"{gptq} is not prepared: run `loopbot model prepare` first")
    if "--divergence-only" in sys.argv:  # the divergence table alone, into the last full run's file
        path = RESULTS / "quantization_quality.json"
        data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        data["divergence_from_fp32"] = divergence(models)
        data["divergence_machine"] = machine()
        write("quantization_quality", data)
        return
    marker = (gptq / "loopbot-prepared.json").read_text(encoding="utf-8")
    data = {
        "machine": machine(),
        "recipe": marker,
        "plain_fp32": evaluate(plain_model_dir(models), "plain_fp32"),
        "gptq_4bit": evaluate(gptq, "gptq_4bit"),
        "divergence_from_fp32": divergence(models),
    }
    write("quantization_quality", data)


if __name__ == "__main__":
    main()
