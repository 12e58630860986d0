"""The model as a training run sees it: the base loaded through :mod:`adapters.model` with the kernel
LoRA learns through, optionally dequantized once, another adapter added frozen beneath, and peft's
LoRA on top; TRL told to score only the answer's positions; and whether it answers the taught rows
word for word yet (:func:`learned`). Runs in the training process (:mod:`adapters.training._worker`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adapters.registry import ADAPTER_CONFIG_FILE

# Every linear projection of a Llama block: what is adapted when the run's config names none.
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# With gradient checkpointing "auto": rows longer than this (prompt + answer tokens) turn it on.
# An anchor (system prompt, a general question, up to 48 answer tokens) is at most ~140 tokens: at 128
# the three longest of the 46 turned checkpointing on for a whole run of 100 short facts (1.55 s a step
# instead of ~1 s). A RAG row with its passages is 200+.
CHECKPOINT_FROM_TOKENS = 160


def load_base(base: str, backend: str) -> tuple[Any, Any]:
    """The base model and tokenizer, loaded exactly as the runtime loads them but for the kernel."""
    from adapters.model import load_base_model

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
    :data:`CHECKPOINT_FROM_TOKENS` tokens: activations grow with the row, and on short rows
    checkpointing costs time and saves no memory (``TrainingOptions.gradient_checkpointing``)."""
    if setting != "auto":
        return bool(setting)

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


def peft_model(model: Any, config: dict[str, Any]) -> Any:
    """``model`` with the run's LoRA on it (peft): the parent adapter's weights to continue from, or a
    fresh LoRA of ``rank`` and ``alpha`` on the target layers it has; checkpointing as configured."""
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
        target_modules=present_targets(config.get("target_modules") or TARGET_MODULES, present),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def present_targets(wanted: list[str], present: set[str]) -> list[str]:
    """The wanted module names the model has; ValueError (the run fails with it) when none is."""
    targets = [m for m in wanted if m in present]
    if not targets:
        raise ValueError(
            f"none of the target modules {wanted} is in the model: check LOOPBOT_TRAIN_TARGET_MODULES"
        )
    return targets


def add_frozen_adapter(model: Any, path: str | None) -> None:
    """Train over another adapter, frozen (a member's over the guild's): its LoRA delta is added to the
    base layers' outputs by forward hooks, the runtime's own :class:`adapters.serving.LoraBank`, so the
    LoRA peft trains on top sees exactly the stack it will be served in. None: nothing to add."""
    if not path:
        return
    from adapters.serving import LoraBank, read_adapter

    config = json.loads(Path(path, ADAPTER_CONFIG_FILE).read_text("utf-8"))
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
