"""Child-process entry of a LoRA training run: ``python -m adapters.training._worker CONFIG.json``.

Training runs in its own process so the bot's event loop, memory and model stay untouched, and a
crash or a kill cannot corrupt anything: the parent publishes the output directory only after this
process exits 0. Protocol: one JSON object per line on stdout (``start``, ``step``, ``done``);
everything else (library logs, warnings, tracebacks) goes to stderr, which the parent sends to the
run's ``train.log``.

The base model is loaded through gptqmodel's ``torch`` kernel: through the default trainable CPU
kernel (``auto_trainable``) the LoRA loss diverges (see docs/PLATFORM_NOTES.md, "Training"), while ``torch`` learns;
with ``dequantize`` its layers are then dequantized once (:func:`~adapters.training._peft.dequantized`),
the same weights without the per-forward dequantization. How the model is made ready for training
(loaded through :mod:`adapters.model`, a frozen adapter beneath, peft's LoRA) is
:mod:`adapters.training._peft`. The saved adapter is an ordinary peft directory, served later through
the fast kernel.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from adapters.training._peft import (
    add_frozen_adapter,
    checkpointing,
    dequantized,
    learned,
    load_base,
    peft_model,
    score_completions_only,
)

# Must be set before gptqmodel is imported: on a 2-core machine it refuses to start otherwise.
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The protocol stream; main() points it at a private copy of stdout so that libraries printing to
# stdout (banners, warnings) cannot corrupt the JSON lines.
_protocol: Any = sys.stdout


def emit(event: str, **data: Any) -> None:
    """Write one progress event as a JSON line on stdout (the parent's only input)."""
    _protocol.write(json.dumps({"event": event, **data}) + "\n")
    _protocol.flush()


def preference_steps(config: dict[str, Any]) -> int:
    """The preference phase's optimizer steps (0: no preference phase)."""
    return int(config.get("preference_steps") or 0) if config.get("preference_dataset") else 0


def _run_args(config: dict[str, Any], steps: int, learning_rate: float) -> dict[str, Any]:
    """The trainer arguments both phases (SFT, preference) share: a constant learning rate, a log line
    per step, nothing saved mid-run, fp32 on the CPU, the run's seed, batch size and checkpointing."""
    return dict(
        output_dir=str(Path(config["output_dir"]) / "checkpoints"),
        max_steps=steps,
        learning_rate=learning_rate,
        per_device_train_batch_size=int(config["batch_size"]),
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=False,
        fp16=False,
        use_cpu=True,
        gradient_checkpointing=bool(config.get("gradient_checkpointing", False)),
        gradient_checkpointing_kwargs={"use_reentrant": False},
        max_length=int(config.get("max_length", 1024)),
        seed=int(config.get("seed", 0)),
        data_seed=int(config.get("seed", 0)),
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def train(config: dict[str, Any]) -> dict[str, Any]:
    """Run one training job described by ``config``; returns the metrics written to ``result.json``."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    started = time.perf_counter()
    if config.get("score_completions_only", True) and not score_completions_only():
        print("TRL's LM head scores every position on the CPU: training uses more memory", file=sys.stderr)
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    torch.manual_seed(int(config.get("seed", 0)))
    # gptqmodel's torch kernel compiles its dequantization with torch.compile: on short rows (a
    # correction without passages) 27 % faster per step (bench/training_speed.py --passages 0: 1.58 vs
    # 2.17 s). With no compile cache (a fresh machine) it first runs a C++ compiler (0.5 GB) beside the
    # training and holds 0.2-0.3 GB more here; the demo's 60 mixed steps gained nothing from it
    # (bench/first_run.py: retrain 313/321 s with it, 305/313 s without). So: long runs only.
    # Dequantized once (below), the kernel's dequantization is not in the loop: nothing to compile.
    if config.get("dequantize") or int(config["steps"]) < int(config.get("compile_min_steps", 0)):
        import torch._dynamo

        torch._dynamo.config.disable = True
    output = Path(config["output_dir"])
    examples = [json.loads(line) for line in Path(config["dataset"]).read_text("utf-8").splitlines() if line]
    model, tokenizer = load_base(config["base"], config.get("backend", "torch"))
    if config.get("dequantize"):
        print(f"dequantized {dequantized(model)} GPTQ layers for training", file=sys.stderr)
    preference_rows = (
        [
            json.loads(line)
            for line in Path(config["preference_dataset"]).read_text("utf-8").splitlines()
            if line
        ]
        if config.get("preference_dataset")
        else []
    )
    config = {
        **config,
        "gradient_checkpointing": checkpointing(
            config.get("gradient_checkpointing", False), [*examples, *preference_rows], tokenizer
        ),
    }
    print(f"gradient checkpointing: {config['gradient_checkpointing']}", file=sys.stderr)
    add_frozen_adapter(model, config.get("beneath_adapter"))  # before peft wraps the layers
    model = peft_model(model, config)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    total = int(config["steps"])
    preference = preference_steps(config)
    losses: list[float] = []
    eval_losses: list[tuple[int, float]] = []  # (step, loss) after each epoch
    held_out = config.get("eval_dataset")
    evaluation = (
        [json.loads(line) for line in Path(held_out).read_text("utf-8").splitlines() if line]
        if held_out
        else []
    )
    eval_steps = min(total, int(config.get("eval_steps") or total))
    checked = [examples[i] for i in config.get("learned_rows") or []]  # until learned: these rows

    class Progress(TrainerCallback):
        """Forward every optimizer step and its loss, and every evaluation, to the parent. The
        preference phase's steps follow the SFT phase's (``offset``) on one bar."""

        def __init__(self, into: list[float], offset: int = 0, phase: str = "sft") -> None:
            self.into, self.offset, self.phase = into, offset, phase

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                self.into.append(float(logs["loss"]))
                emit(
                    "step",
                    step=self.offset + state.global_step,
                    total=total + preference,
                    loss=float(logs["loss"]),
                    phase=self.phase,
                    until_learned=bool(checked) and self.phase == "sft",
                    seconds=round(time.perf_counter() - started, 2),
                )
            if logs and "eval_loss" in logs:
                eval_losses.append((int(state.global_step), float(logs["eval_loss"])))
                emit("eval", step=state.global_step, total=total, loss=float(logs["eval_loss"]))

    learned_at: list[tuple[int, int]] = []  # (step, rows learned) at each check

    class Learned(TrainerCallback):
        """Stop once every taught row is learned (:func:`learned`), checked at the end of each pass
        from ``learned_from_step`` on (adapters.training.TrainingOptions.until_learned)."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            step = int(state.global_step)
            if step < int(config.get("learned_from_step", 0)) or step % eval_steps or step >= total:
                return
            count = learned(model, tokenizer, checked)
            learned_at.append((step, count))
            emit("learned", step=step, total=total, learned=count, of=len(checked))
            if count == len(checked):
                control.should_training_stop = True

    args = SFTConfig(
        **_run_args(config, total, float(config["learning_rate"])),
        # With held-out rows: their loss after every epoch, as an SFTTrainer run with an eval set.
        eval_strategy="steps" if evaluation else "no",
        eval_steps=eval_steps if evaluation else None,
        per_device_eval_batch_size=int(config["batch_size"]),
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(examples),
        eval_dataset=Dataset.from_list(evaluation) if evaluation else None,
        processing_class=tokenizer,
        callbacks=[Progress(losses), *([Learned()] if checked else [])],
    )
    loop_started = time.perf_counter()
    trainer.train()
    trained = int(trainer.state.global_step)
    if checked and (not learned_at or learned_at[-1][0] != trained):
        learned_at.append((trained, learned(model, tokenizer, checked)))  # where training ended
    if evaluation and (not eval_losses or eval_losses[-1][0] != trained):
        trainer.evaluate()  # the last steps' epoch was not whole: measure where training ended
    loop_seconds = time.perf_counter() - loop_started
    preferred: dict[str, Any] = {}
    if preference:
        del trainer  # its optimizer state goes before the preference phase builds its own
        preferred = _prefer(
            model, tokenizer, config, preference_rows, Progress([], offset=trained, phase="preference")
        )
    model.save_pretrained(str(output))
    write_learning_curve(Path(config["learning_curve"]), losses, eval_losses, eval_steps)
    shutil.rmtree(output / "checkpoints", ignore_errors=True)
    seconds = time.perf_counter() - started
    return {
        "train_seconds": round(seconds, 2),
        "loop_seconds": round(loop_seconds, 2),
        "steps": trained,
        "max_steps": total,
        "examples": len(examples),
        # Taught rows answered word for word at each check, and of how many (until_learned).
        "learned": [[step, count] for step, count in learned_at],
        "learned_of": len(checked),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "eval_rows": len(evaluation),
        "eval_losses": [[step, round(loss, 4)] for step, loss in eval_losses],
        **preferred,
        # ru_maxrss is in KiB on Linux.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _prefer(
    model: Any, tokenizer: Any, config: dict[str, Any], rows: list[dict[str, Any]], progress: Any
) -> dict[str, Any]:
    """The preference phase, after the SFT steps on the same LoRA: TRL's ``DPOTrainer`` on rows
    ``{"prompt", "chosen", "rejected"}`` (a correction over the answer it replaced).

    The loss is DPO's (sigmoid) plus the chosen answer's negative log-likelihood ("sft"), as RPO does:
    DPO alone can lower the chosen answer's likelihood too as long as the rejected one falls faster.
    The reference is the adapter as SFT left it (TRL copies a peft model's adapter as "ref"), so the
    phase pushes the rejected answers down from where the taught facts put the model; the copy is
    deleted before saving. Returns the phase's metrics (``preference_*``)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    steps = int(config["preference_steps"])
    started = time.perf_counter()
    args = DPOConfig(
        **_run_args(config, steps, float(config["preference_learning_rate"])),
        beta=float(config["preference_beta"]),
        loss_type=["sigmoid", "sft"],
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[progress],
    )
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")  # the frozen reference copy: not part of the trained adapter
    last = logged[-1] if logged else {}
    return {
        "preference_rows": len(rows),
        "preference_steps": steps,
        "preference_seconds": round(time.perf_counter() - started, 2),
        "preference_first_loss": logged[0]["loss"] if logged else None,
        "preference_final_loss": last.get("loss"),
        # The last step's share of rows whose chosen answer the adapter now prefers, and by how much
        "preference_accuracy": last.get("rewards/accuracies"),
        "preference_margin": last.get("rewards/margins"),
    }


def write_learning_curve(
    path: Path, losses: list[float], eval_losses: list[tuple[int, float]], epoch_steps: int
) -> None:
    """The run's learning curve: the CSV ``path`` the config names (step, epoch, train loss, eval loss
    where measured) and, when matplotlib is there, a PNG beside it. Numbers only: no member text."""
    import csv

    evaluated = dict(eval_losses)
    epochs = [step / max(1, epoch_steps) for step in range(1, len(losses) + 1)]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "epoch", "train_loss", "eval_loss"])
        for step, (epoch, loss) in enumerate(zip(epochs, losses, strict=True), start=1):
            writer.writerow([step, round(epoch, 3), round(loss, 5), evaluated.get(step, "")])
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(epochs, losses, lw=1, label="train loss (each step)")
    if eval_losses:
        ax.plot([s / max(1, epoch_steps) for s, _ in eval_losses], [v for _, v in eval_losses], "o-",
                label="eval loss (held-out pairs)")  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> int:
    """Entry point: read the config file named on the command line, train, report, exit 0 or 1."""
    if len(argv) != 1:
        print("usage: python -m adapters.training._worker CONFIG.json", file=sys.stderr)
        return 2
    global _protocol
    _protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # anything else written to stdout ends up in the log
    config = json.loads(Path(argv[0]).read_text("utf-8"))
    emit("start", pid=os.getpid(), total=int(config["steps"]) + preference_steps(config))
    metrics = train(config)
    Path(config["result_file"]).write_text(json.dumps(metrics, indent=2), "utf-8")
    emit("done", **metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
