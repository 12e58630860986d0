"""Prompts' forwards for the engine (:mod:`adapters.serving._engine`): prompts of a similar length in
one left-padded forward (:func:`group_forward`), or a long prompt a chunk at a time
(:func:`chunk_forward`, :data:`~adapters.serving._requests.PREFILL_CHUNK` tokens a step) so that the
rows already answering decode between its chunks. Each fills a cache of its own, which the engine
then joins to the batch's (:func:`adapters.serving._cache.join_rows`).

The prompt's shared prefix (the system prompt's turn, ``Request.shared_prefix`` tokens) is computed
once per adapter stack and its keys and values copied into each new prompt's cache
(:class:`PrefixCache`): every question, the gate's and the regression run's included, starts after it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from adapters.serving._requests import Request


class PrefixCache:
    """Keys and values of shared prompt prefixes, per adapter stack (the LoRA deltas change them), the
    :data:`CAPACITY` most recently used kept (~1.4 MB each for a 60-token system turn of the default
    model). An adapter's entries go when it is unloaded (:meth:`drop`)."""

    CAPACITY = 8

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[tuple[int, ...], tuple[str, ...]], list[tuple[Any, Any]]] = (
            OrderedDict()
        )
        self.computed = 0  # prefixes computed so far (tests read it)

    def layers(
        self, model: Any, cache_arg: str, device: Any, bank: Any, request: Request
    ) -> list[tuple[Any, Any]]:
        """Per layer, the keys and values (1, kv_heads, prefix, dim) of ``request``'s shared prefix with
        its adapters (computed on first use: one forward of the prefix; ``bank`` is left on them)."""
        import torch

        from adapters.serving._cache import growing_cache

        key = (tuple(request.prompt_ids[: request.shared_prefix]), request.adapter.names)
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        cache = growing_cache(model.config)
        bank.use([request.adapter.names])
        model(
            input_ids=torch.tensor([key[0]], device=device),
            use_cache=True,
            logits_to_keep=1,
            **{cache_arg: cache},
        )
        self._entries[key] = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
        self.computed += 1
        while len(self._entries) > self.CAPACITY:
            self._entries.popitem(last=False)
        return self._entries[key]

    def drop(self, adapter: str) -> None:
        """Forget every prefix computed with ``adapter``."""
        for key in [k for k in self._entries if adapter in k[1]]:
            del self._entries[key]


def shared_prefix(group: list[Request]) -> int:
    """Prompt tokens every request of ``group`` shares as its prefix (0: none)."""
    n = group[0].shared_prefix
    first = group[0].prompt_ids[:n]
    if n and all(r.shared_prefix == n and r.prompt_ids[:n] == first for r in group):
        return n
    return 0


def group_forward(
    model: Any, cache_arg: str, device: Any, group: list[Request], bank: Any, prefixes: PrefixCache
) -> tuple[Any, Any, Any]:
    """The prompts of ``group`` in one forward after their shared prefix's cached keys and values, each
    rest left-padded to the longest (the padding, between prefix and rest, masked and its keys and
    values zeroed): returns each prompt's last logits, the cache and the mask."""
    import torch

    from adapters.serving._cache import growing_cache  # imports transformers: only once a model serves

    start = shared_prefix(group)
    cache: Any = growing_cache(model.config)
    if start:
        rows = [prefixes.layers(model, cache_arg, device, bank, r) for r in group]
        for index, layer in enumerate(cache.layers):
            layer.update(
                torch.cat([row[index][0] for row in rows]), torch.cat([row[index][1] for row in rows])
            )
    bank.use([r.adapter.names for r in group])
    longest = max(len(r.prompt_ids) for r in group) - start
    pads = [longest - len(r.prompt_ids) + start for r in group]
    ids = torch.tensor([[0] * p + r.prompt_ids[start:] for p, r in zip(pads, group, strict=True)])
    rest = (torch.arange(longest).unsqueeze(0) >= torch.tensor(pads).unsqueeze(1)).long()
    mask = torch.cat([torch.ones(len(group), start, dtype=torch.long), rest], 1)
    padded = {}
    if any(pads):
        padded = {"attention_mask": mask, "position_ids": start + (rest.cumsum(-1) - 1).clamp(min=0)}
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
                layer.keys[row, :, start : start + pad] = 0
                layer.values[row, :, start : start + pad] = 0
    return out.logits[:, -1, :], cache, mask.to(device)


def chunk_forward(
    model: Any, cache_arg: str, device: Any, request: Request, bank: Any, prefixes: PrefixCache, tokens: int
) -> Any:
    """The next ``tokens`` tokens of ``request``'s prompt into its ``prompt_cache`` (made on the first
    chunk, from the shared prefix's cached keys and values); the prompt's last logits after its last
    chunk, else None."""
    import torch

    from adapters.serving._cache import growing_cache

    if request.prompt_cache is None:
        request.prompt_cache = growing_cache(model.config)
        if request.shared_prefix:
            rows = prefixes.layers(model, cache_arg, device, bank, request)
            for layer, (keys, values) in zip(request.prompt_cache.layers, rows, strict=True):
                layer.update(keys.clone(), values.clone())
            request.prefilled = request.shared_prefix
    bank.use([request.adapter.names])
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
