"""Decode speed and time to first token of the default model (GPTQ 4-bit and plain fp32), 2 threads.

Two prompts: a short question, and a ~900-token RAG prompt (numbered passages + question).
Each is generated greedily 3 times after a warm-up; the median is reported.
Run: ``python bench/model_speed.py [--models DIR]``; writes bench/results/model_speed.json.
"""

from __future__ import annotations

import statistics

from _common import machine, models_dir, rag_messages, write

SHORT = [{"role": "user", "content": "What is the capital of Japan?"}]
RUNS = 3


def measure(path, label: str) -> dict:
    from adapters.runtime import ModelRuntime

    out: dict = {}
    with ModelRuntime.load(path, device="cpu", threads=2) as runtime:
        out["kernels"] = runtime.info()["kernels"]
        for name, messages, new_tokens in (
            ("short_question", SHORT, 32),
            ("rag_900_tokens", rag_messages(0, 4), 32),
        ):
            runtime.generate(messages, max_new_tokens=4)  # warm-up
            runs = [runtime.generate(messages, max_new_tokens=new_tokens) for _ in range(RUNS)]
            out[name] = {
                "prompt_tokens": runs[0].prompt_tokens,
                "completion_tokens": runs[0].completion_tokens,
                "ttft_s": round(statistics.median(r.first_token_seconds or 0.0 for r in runs), 3),
                "decode_tok_s": round(statistics.median(r.tokens_per_second for r in runs), 1),
                "total_s": round(statistics.median(r.seconds for r in runs), 2),
                "answer": runs[0].text,
            }
            print(label, name, out[name], flush=True)
    return out


def main() -> None:
    from adapters.default_model import default_model_dir, plain_model_dir

    models = models_dir()
    write(
        "model_speed",
        {
            "machine": machine(),
            "threads": 2,
            "gptq_4bit": measure(default_model_dir(models), "gptq"),
            "plain_fp32": measure(plain_model_dir(models), "fp32"),
        },
    )


if __name__ == "__main__":
    main()
