"""What a training process does to the model before and while it trains (adapters/training/_peft.py):
only the answer's positions scored, a frozen adapter beneath, the target layers, the base dequantized."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.errors import AdapterError
from adapters.prompt import training_messages
from adapters.training import TrainingExample, TrainingOptions
from tests.adapters.training.facts import SYSTEM


def test_only_the_answer_is_scored_and_the_loss_is_unchanged(tiny_model_dir: Path) -> None:
    """The training process scores only the completion's positions through the LM head on the CPU
    (TRL scores every position there, at a large memory cost): same loss, same gradients."""
    import torch
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM

    from adapters.training._peft import score_completions_only

    def loss_and_grad() -> tuple[float, torch.Tensor]:
        model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
        trl_utils.add_fused_lm_head(model)
        ids = torch.randint(5, 200, (2, 40), generator=torch.Generator().manual_seed(0))
        labels = ids.clone()
        labels[:, :32] = -100  # a long prompt, a short answer
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        return float(out.loss.detach()), model.get_output_embeddings().weight.grad.clone()

    original = trl_utils._use_triton
    try:
        everywhere = loss_and_grad()
        assert score_completions_only(), (
            "this TRL decides the LM head's scoring differently: see the docstring"
        )
        compact = loss_and_grad()
    finally:
        trl_utils._use_triton = original
    assert abs(everywhere[0] - compact[0]) < 1e-5
    assert torch.allclose(everywhere[1], compact[1], atol=1e-6)


def test_an_adapter_trains_over_a_frozen_one_as_it_will_be_served(
    tiny_model_dir: Path, make_lora_adapter
) -> None:
    """The worker adds the frozen adapter's delta under peft's LoRA: the model it trains computes what
    peft computes with both adapters active, and only the new LoRA has gradients."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adapters.training._peft import add_frozen_adapter, peft_model

    guild = make_lora_adapter(tiny_model_dir, seed=3)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        bare = plain(ids).logits
    reference = PeftModel.from_pretrained(plain, str(guild)).eval()
    with torch.no_grad():
        expected = reference(ids).logits
    assert not torch.allclose(expected, bare, atol=1e-4)  # the guild adapter changes the answer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    add_frozen_adapter(model, str(guild))
    member = peft_model(model, {"rank": 4, "alpha": 8})  # a fresh LoRA: B = 0, no change yet
    with torch.no_grad():
        got = member(ids).logits
    assert torch.allclose(got, expected, atol=1e-4)
    trainable = {n for n, p in member.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    member(ids).logits.sum().backward()  # gradients reach the new LoRA through the frozen delta
    grads = [p.grad for n, p in member.named_parameters() if n in trainable and "lora_B" in n]
    assert grads and all(g is not None and float(g.abs().sum()) > 0 for g in grads)


def test_target_modules_must_name_layers_the_model_has() -> None:
    from adapters.training._peft import present_targets

    assert present_targets(["q_proj", "gate_proj"], {"q_proj", "v_proj"}) == ["q_proj"]
    with pytest.raises(ValueError, match="LOOPBOT_TRAIN_TARGET_MODULES"):
        present_targets(["qproj"], {"q_proj", "v_proj"})  # a typo: the run fails saying which setting
    with pytest.raises(AdapterError, match="at least one target module"):
        TrainingOptions(target_modules=())


def test_the_base_dequantized_for_training_computes_what_the_kernel_does(tiny_gptq_dir: Path) -> None:
    """Training over the base's dequantized layers: the same logits as through gptqmodel's ``torch``
    kernel (what the adapter is trained against is what will be served), no GPTQ layer left."""
    import torch
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    from adapters.training._peft import checkpointing, dequantized, load_base

    model, tokenizer = load_base(str(tiny_gptq_dir), "torch")
    quantized = sum(isinstance(m, BaseQuantLinear) for m in model.modules())
    ids = torch.tensor([tokenizer("The parrot is called Quibble.")["input_ids"]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    assert quantized > 0 and dequantized(model) == quantized
    assert not any(isinstance(m, BaseQuantLinear) for m in model.modules())
    q_proj = model.get_submodule("model.layers.0.self_attn.q_proj")
    assert (
        type(q_proj) is torch.nn.Linear and not q_proj.weight.requires_grad
    )  # frozen: LoRA trains beside it
    with torch.no_grad():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    # "auto" checkpointing: only rows longer than CHECKPOINT_FROM_TOKENS pay for it.
    short = TrainingExample(
        "1", training_messages("Who?", "", SYSTEM), "The parrot is called Quibble."
    ).record()
    long = TrainingExample("9", training_messages("Why?", "word " * 200, SYSTEM), "Because.").record()
    assert checkpointing("auto", [short], tokenizer) is False
    assert checkpointing("auto", [short, long], tokenizer) is True
    assert (
        checkpointing(True, [short], tokenizer) is True and checkpointing(False, [long], tokenizer) is False
    )
