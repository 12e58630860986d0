"""A key/value cache whose layers grow with headroom, for the batching engine.

transformers' ``DynamicLayer`` appends each decode step's keys and values with ``torch.cat``: every
step copies the whole cache, 30 layers x rows x context. With a ~1,000-token RAG prompt that copy is a
tenth of a step (one row: 14.6 -> 13.5 ms a step; eight rows: 58.0 -> 52.7 ms, bench/decode_overhead.py).
:class:`GrowingLayer` keeps each layer's keys and values in a buffer with room for more tokens and
writes a step's token in place; ``keys`` and ``values`` are views of the filled part, so code that
reads or assigns them (the engine pads, joins and drops rows by assigning new tensors) works as with
a ``DynamicLayer``. Assigning a tensor makes it the buffer; the next step that needs room copies once
into one a quarter larger.
"""

from __future__ import annotations

from typing import Any

from transformers.cache_utils import DynamicCache, DynamicLayer

HEADROOM_MIN = 64  # tokens of room added at least when a buffer grows


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` that appends in place (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        self._keys: Any = None
        self._values: Any = None
        self._lengths = [0, 0]  # filled tokens of the key and of the value buffer (assigned one by one)
        super().__init__(**kwargs)

    @property  # type: ignore[override]
    def keys(self) -> Any:
        return self._filled(self._keys, 0)

    @keys.setter
    def keys(self, value: Any) -> None:
        self._keys = self._assigned(value, 0)

    @property  # type: ignore[override]
    def values(self) -> Any:
        return self._filled(self._values, 1)

    @values.setter
    def values(self, value: Any) -> None:
        self._values = self._assigned(value, 1)

    def _filled(self, buffer: Any, which: int) -> Any:
        return buffer if buffer is None or buffer.dim() < 3 else buffer[:, :, : self._lengths[which]]

    def _assigned(self, value: Any, which: int) -> Any:
        self._lengths[which] = 0 if value is None or value.dim() < 3 else value.shape[2]
        return value

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        if self._keys is None or self._keys.dim() < 3:  # the first update (a prompt): the buffer is its own
            self.is_initialized = True
            self.device = key_states.device
            self.keys, self.values = key_states, value_states
            return self.keys, self.values
        length = self._lengths[0]
        end = length + key_states.shape[2]
        if end > self._keys.shape[2]:
            room = end + max(HEADROOM_MIN, length // 4)
            self._keys, self._values = self._grown(self._keys, room), self._grown(self._values, room)
        self._keys[:, :, length:end] = key_states
        self._values[:, :, length:end] = value_states
        self._lengths = [end, end]
        return self.keys, self.values

    def room(self, tokens: int) -> tuple[Any, Any, int]:
        """Make room for ``tokens`` more tokens in contiguous buffers (for code that writes them itself,
        the native decode step); returns the key and value buffers ``(rows, heads, capacity, dim)``
        and the filled length. :meth:`advance` then counts the written tokens as filled."""
        length = self._lengths[0]
        if self._lengths[1] != length:
            raise ValueError("keys and values of a cache layer differ in length: assign both first")
        end = length + tokens
        if end > self._keys.shape[2] or not (self._keys.is_contiguous() and self._values.is_contiguous()):
            room = max(end + max(HEADROOM_MIN, length // 4), self._keys.shape[2])
            self._keys, self._values = self._grown(self._keys, room), self._grown(self._values, room)
        return self._keys, self._values, length

    def advance(self, tokens: int) -> None:
        """Count ``tokens`` more tokens, written into the buffers :meth:`room` returned, as filled."""
        end = self._lengths[0] + tokens
        self._lengths = [end, end]

    def _grown(self, buffer: Any, room: int) -> Any:
        batch, heads, _, dim = buffer.shape
        length = self._lengths[0]
        grown = buffer.new_empty(batch, heads, room, dim)
        grown[:, :, :length] = buffer[:, :, :length]
        return grown


def growing_cache(config: Any) -> Any:
    """A ``DynamicCache`` for ``config`` whose full-attention layers are :class:`GrowingLayer`."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def join_rows(cache: Any, mask: Any, other: Any, other_mask: Any) -> Any:
    """Append the rows of ``other`` (a cache and its ``other_mask``) to ``cache``, left-padding whichever
    is shorter (the mask hides the padding); returns the joined mask."""
    import torch
    import torch.nn.functional as F

    length, current = other_mask.shape[1], mask.shape[1]
    grow, pad = max(0, length - current), max(0, current - length)
    for mine, theirs in zip(cache.layers, other.layers, strict=True):
        mine.keys = torch.cat([F.pad(mine.keys, (0, 0, grow, 0)), F.pad(theirs.keys, (0, 0, pad, 0))])
        mine.values = torch.cat([F.pad(mine.values, (0, 0, grow, 0)), F.pad(theirs.values, (0, 0, pad, 0))])
    return torch.cat([F.pad(mask, (grow, 0)), F.pad(other_mask, (pad, 0))])
