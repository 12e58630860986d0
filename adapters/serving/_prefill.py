"""Prompts' forwards for the engine (:mod:`adapters.serving._engine`): prompts of a similar length in
one left-padded forward (:func:`group_forward`), or a long prompt a chunk at a time
(:func:`chunk_forward`, :data:`~adapters.serving._requests.PREFILL_CHUNK` tokens a step) so that the
rows already answering decode between its chunks. Each fills a cache of its own, which the engine
then joins to the batch's (:func:`adapters.serving._cache.join_rows`)."""

from __future__ import annotations

from typing import Any

from adapters.serving._requests import PREFILL_CHUNK, Request


def group_forward(model: Any, cache_arg: str, device: Any, group: list[Request]) -> tuple[Any, Any, Any]:
    """The prompts of ``group`` in one forward, left-padded to the longest (the padding masked, its
    keys and values zeroed): returns each prompt's last logits, the cache and the mask."""
    import torch

    from adapters.serving._cache import growing_cache  # imports transformers: only once a model serves

    longest = max(len(r.prompt_ids) for r in group)
    pads = [longest - len(r.prompt_ids) for r in group]
    ids = torch.tensor([[0] * p + r.prompt_ids for p, r in zip(pads, group, strict=True)])
    mask = (torch.arange(longest).unsqueeze(0) >= torch.tensor(pads).unsqueeze(1)).long()
    padded = {}
    if any(pads):
        padded = {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
    cache: Any = growing_cache(model.config)
    out = model(
        input_ids=ids.to(device),
        use_cache=True,
        logits_to_keep=1,
        **{k: v.to(device) for k, v in padded.items()},
        **{cache_arg: cache},
    )
    for layer in cache.layers:  # padding's keys and values are never attended to: keep them finite
        for row, pad in enumerate(pads):
            if pad:
                layer.keys[row, :, :pad] = 0
                layer.values[row, :, :pad] = 0
    return out.logits[:, -1, :], cache, mask.to(device)


def chunk_forward(
    model: Any, cache_arg: str, device: Any, request: Request, tokens: int = PREFILL_CHUNK
) -> Any:
    """The next ``tokens`` tokens of ``request``'s prompt into its ``prompt_cache`` (made on the first
    chunk); the prompt's last logits after its last chunk, else None."""
    import torch

    from adapters.serving._cache import growing_cache

    if request.prompt_cache is None:
        request.prompt_cache = growing_cache(model.config)
    start = request.prefilled
    end = min(len(request.prompt_ids), start + tokens)
    out = model(
        input_ids=torch.tensor([request.prompt_ids[start:end]], device=device),
        position_ids=torch.arange(start, end, device=device)[None],
        use_cache=True,
        logits_to_keep=1,
        **{cache_arg: request.prompt_cache},
    )
    request.prefilled = end
    return out.logits[:, -1, :] if end == len(request.prompt_ids) else None
