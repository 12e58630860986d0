"""Child-process entry of a LoRA training run: ``python -m adapters._train_worker CONFIG.json``.

Training runs in its own process so the bot's event loop, memory and model stay untouched, and a
crash or a kill cannot corrupt anything: the parent publishes the output directory only after this
process exits 0. Protocol: one JSON object per line on stdout (``start``, ``step``, ``done``);
everything else (library logs, warnings, tracebacks) goes to stderr, which the parent sends to the
run's ``train.log``.

The base model is loaded through gptqmodel's ``torch`` kernel: through the default trainable CPU
kernel (``auto_trainable``) the LoRA loss diverges (see docs/PLATFORM_NOTES.md, "Training"), while ``torch`` learns;
with ``dequantize`` its layers are then dequantized once (:func:`dequantized`), the same weights
without the per-forward dequantization. The saved adapter is an ordinary peft directory, served later through the fast kernel.
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

# Must be set before gptqmodel is imported: on a 2-core machine it refuses to start otherwise.
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The protocol stream; main() points it at a private copy of stdout so that libraries printing to
# stdout (banners, warnings) cannot corrupt the JSON lines.
_protocol: Any = sys.stdout

# Every linear projection of a Llama block: what is adapted when the run's config names none.
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def emit(event: str, **data: Any) -> None:
    """Write one progress event as a JSON line on stdout (the parent's only input)."""
    _protocol.write(json.dumps({"event": event, **data}) + "\n")
    _protocol.flush()


def _load_base(base: str, backend: str) -> tuple[Any, Any]:
    """The base model and tokenizer, loaded exactly as the runtime loads them but for the kernel."""
    from adapters.runtime import load_base_model

    return load_base_model(base, device="cpu", backend=backend)


def dequantized(model: Any) -> int:
    """Replace every GPTQ linear layer of ``model`` (gptqmodel's ``torch`` kernel) by a frozen fp32
    ``nn.Linear`` holding the same dequantized weights; returns how many were replaced.

    The base is frozen while a LoRA trains, so its int4 weights need dequantizing only once: the
    kernel, in training mode, dequantizes every layer again in every forward, and with gradient
    checkpointing once more in the backward pass. The layers keep their names, so the adapter is an
    ordinary peft adapter served over the GPTQ model as before, and it learns the very weights that
    will be served (not the unquantized model's)."""
    import torch
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    replaced = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, BaseQuantLinear) or not hasattr(module, "dequantize_weight"):
            continue
        with torch.no_grad():
            weight = module.dequantize_weight().T.to(torch.float32).contiguous()
        linear = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        linear.weight = torch.nn.Parameter(weight, requires_grad=False)
        if module.bias is not None:
            linear.bias = torch.nn.Parameter(module.bias.detach().to(torch.float32), requires_grad=False)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, linear)
        replaced += 1
    if replaced:  # a plain fp32 model now: peft and TRL treat it as one
        model.config.quantization_config = None
        model.is_quantized = False
    return replaced


def checkpointing(setting: Any, rows: list[dict[str, Any]], tokenizer: Any) -> bool:
    """Whether to recompute activations in the backward pass: the setting, or with ``"auto"`` whether
    a row (prompt + completion, as the chat template renders it) is longer than
    :data:`adapters.training.CHECKPOINT_FROM_TOKENS` tokens: activations grow with the row, and on
    short rows checkpointing costs time and saves no memory (adapters/training.py)."""
    if setting != "auto":
        return bool(setting)
    from adapters.training import CHECKPOINT_FROM_TOKENS

    for row in rows:
        messages = [*row.get("prompt", []), *row.get("completion", row.get("chosen", []))]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) > CHECKPOINT_FROM_TOKENS:
            return True
    return False


def learned(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> int:
    """How many ``rows`` (TRL conversational prompt/completion rows) the model answers word for word:
    every token of the completion is the model's most likely next token after the prompt and the
    completion's earlier tokens, which is what greedy decoding of that prompt will say. One forward
    pass a row, without gradients; the model is put back into training mode."""
    import torch

    was_training = model.training
    model.eval()
    count = 0
    try:
        with torch.no_grad():
            for row in rows:
                prompt = tokenizer.apply_chat_template(
                    row["prompt"], add_generation_prompt=True, tokenize=False
                )
                prefix = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                answer = tokenizer(row["completion"][0]["content"], add_special_tokens=False)["input_ids"]
                if not answer:
                    count += 1
                    continue
                ids = torch.tensor([prefix + answer])
                logits = model(input_ids=ids).logits[0, len(prefix) - 1 : -1]
                count += int(torch.equal(logits.argmax(-1), ids[0, len(prefix) :]))
    finally:
        model.train(was_training)
    return count


def _peft_model(model: Any, config: dict[str, Any]) -> Any:
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    checkpointing = bool(config.get("gradient_checkpointing", False))
    if getattr(model, "is_quantized", False) or getattr(model.config, "quantization_config", None):
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if config.get("parent_adapter"):
        # Continue from the active adapter: its weights are the starting point and stay trainable.
        return PeftModel.from_pretrained(model, config["parent_adapter"], is_trainable=True)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    lora = LoraConfig(
        r=config["rank"],
        lora_alpha=config["alpha"],
        lora_dropout=0.0,
        target_modules=_targets(config.get("target_modules") or TARGET_MODULES, present),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _targets(wanted: list[str], present: set[str]) -> list[str]:
    """The wanted module names the model has; ValueError (the run fails with it) when none is."""
    targets = [m for m in wanted if m in present]
    if not targets:
        raise ValueError(
            f"none of the target modules {wanted} is in the model: check LOOPBOT_TRAIN_TARGET_MODULES"
        )
    return targets


def _add_frozen_adapter(model: Any, path: str | None) -> None:
    """Train over another adapter, frozen (a member's over the guild's): its LoRA delta is added to the
    base layers' outputs by forward hooks, the runtime's own :class:`adapters._lora.LoraBank`, so the
    LoRA peft trains on top sees exactly the stack it will be served in. None: nothing to add."""
    if not path:
        return
    from adapters._lora import LoraBank, read_adapter

    config = json.loads(Path(path, "adapter_config.json").read_text("utf-8"))
    bank = LoraBank(model)
    bank.add("beneath", read_adapter(Path(path), config))
    bank.use([("beneath",)])  # one row's plan applies to every row of every batch


def score_completions_only() -> bool:
    """Make TRL's fused LM head score only the completion's positions on the CPU too.

    TRL projects hidden states through the 49k-token LM head in tiles and keeps only positions with a
    label; on CUDA/XPU it first drops the prompt's positions (``compact``), elsewhere it scores every
    position and masks the prompt's out afterwards. Our rows are a long RAG prompt and a short answer,
    so on the CPU that cost a quarter of the memory and of the time (bench/training_speed.py, 649-token
    prompts: peak 3.9 → 3.0 GB, 70 → 52 s for 6 steps; same loss). Returns False, changing nothing, if
    this TRL no longer decides it that way (the test suite checks it does).
    """
    import inspect

    import trl.trainer.utils as trl_utils

    fused = getattr(trl_utils, "add_fused_lm_head", None)
    if fused is None or "compact = _use_triton(" not in inspect.getsource(fused):
        return False
    if sum(1 for line in inspect.getsource(trl_utils).splitlines() if "_use_triton(" in line) != 1:
        return False  # the name decides something else too: leave it alone
    trl_utils._use_triton = lambda device: True  # type: ignore[attr-defined]
    return True


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
    model, tokenizer = _load_base(config["base"], config.get("backend", "torch"))
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
    _add_frozen_adapter(model, config.get("beneath_adapter"))  # before peft wraps the layers
    model = _peft_model(model, config)
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
    write_learning_curve(output, losses, eval_losses, eval_steps)
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
    output: Path, losses: list[float], eval_losses: list[tuple[int, float]], epoch_steps: int
) -> None:
    """The run's learning curve: ``learning_curve.csv`` (step, epoch, train loss, eval loss where
    measured) and, when matplotlib is there, ``learning_curve.png``. Numbers only: no member text."""
    import csv

    from adapters.registry import LEARNING_CURVE_FILE

    evaluated = dict(eval_losses)
    epochs = [step / max(1, epoch_steps) for step in range(1, len(losses) + 1)]
    with (output / LEARNING_CURVE_FILE).open("w", newline="", encoding="utf-8") as handle:
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
    fig.savefig((output / LEARNING_CURVE_FILE).with_suffix(".png"), dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> int:
    """Entry point: read the config file named on the command line, train, report, exit 0 or 1."""
    if len(argv) != 1:
        print("usage: python -m adapters._train_worker CONFIG.json", file=sys.stderr)
        return 2
    global _protocol
    _protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # anything else written to stdout ends up in the log
    config = json.loads(Path(argv[0]).read_text("utf-8"))
    emit("start", pid=os.getpid(), total=int(config["steps"]) + preference_steps(config))
    metrics = train(config)
    Path(config["output_dir"], "result.json").write_text(json.dumps(metrics, indent=2), "utf-8")
    emit("done", **metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
