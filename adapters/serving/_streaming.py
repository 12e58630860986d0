"""Streaming for the runtime: incremental decoding, stop strings held back, early stop (a stop string,
or the answer looping), and the choice of each row's next token."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from adapters.prompt import loop_start

# The loop check (a regex over the text's last 320 characters) costs ~0.6 ms, as much as 6 % of a
# one-row decode step and 20 % of an eight-row one if run for every token of every row
# (bench/decode_overhead.py); every 4th token it lets a looping answer run at most 3 tokens longer,
# and the answer is cut at the same place (the end of the loop's first round).
LOOP_CHECK_TOKENS = 4


class _Streamer:
    """Decodes a request's new tokens, hides stop strings, feeds ``on_token``.

    Text that could be the start of a stop string is held back until it is known not to be one,
    so the callback never sees text the final answer does not contain.
    """

    def __init__(
        self,
        tokenizer: Any,
        stop: Sequence[str],
        on_token: Callable[[str], None] | None,
        cancel: threading.Event,
    ):
        self.tokenizer, self.stop, self.on_token, self.cancel = (
            tokenizer,
            [s for s in stop if s],
            on_token,
            cancel,
        )
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stopped_at: int | None = None
        self.started = time.perf_counter()
        self.first_token: float | None = None

    def put_ids(self, ids: Sequence[int]) -> None:
        """Take the next generated token ids; emit what is now known to be answer text."""
        if self.first_token is None:
            self.first_token = time.perf_counter() - self.started
        self.ids.extend(ids)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        ends = [index for index in (self.text.find(s) for s in self.stop) if index != -1]
        self._stop_at(ends, loop=len(self.ids) % LOOP_CHECK_TOKENS == 0)
        self._emit(final=False)

    def end(self) -> None:
        self._stop_at([], loop=True)  # the tokens since the last check: the text ends where it did
        self._emit(final=True)

    def _stop_at(self, ends: list[int], *, loop: bool) -> None:
        """Stop at the first of ``ends`` or, when ``loop``, where the text starts looping (a looping
        answer stops after its first round)."""
        start = loop_start(self.text, tail_only=True) if loop else None
        ends = [*ends, start] if start is not None else ends
        if ends and (self.stopped_at is None or min(ends) < self.stopped_at):
            self.stopped_at = min(ends)

    def _emit(self, *, final: bool) -> None:
        safe = len(self.text) if self.stopped_at is None else self.stopped_at
        if not final and self.stopped_at is None:
            safe -= max((len(s) - 1 for s in self.stop), default=0)
            while safe > self.emitted and self.text[safe - 1] == "\ufffd":  # half a multi-byte character
                safe -= 1
        if safe > self.emitted:
            piece = self.text[self.emitted : safe]
            self.emitted = safe
            if self.on_token is not None:
                self.on_token(piece)

    def should_stop(self) -> bool:
        return self.stopped_at is not None or self.cancel.is_set()

    def final_text(self) -> str:
        return self.text if self.stopped_at is None else self.text[: self.stopped_at]


def penalise_repeats(scores: Any, generated: Sequence[int], penalty: float) -> Any:
    """One row's logits with the tokens its answer already used made less likely (CTRL-style).

    Unlike transformers' ``repetition_penalty``, the prompt's tokens are not penalised: in a RAG
    prompt those are the facts the answer should copy (measured: penalising them made the default
    model invent instead of quoting). It breaks the small model's loops ("You can't. You can't. …")."""
    import torch

    seen = torch.tensor(sorted(set(generated)), dtype=torch.long, device=scores.device)
    values = scores.index_select(0, seen)
    return scores.index_copy(0, seen, torch.where(values < 0, values * penalty, values / penalty))


def choose_tokens(
    logits: Any, generated: Sequence[Sequence[int]], temperatures: Sequence[float], penalty: float
) -> list[int]:
    """The next token of each row: greedy, or sampled (top-p 0.95) when it has a temperature;
    ``generated``: each row's answer so far (penalised by :func:`penalise_repeats` unless ``penalty`` is 1)."""
    import torch

    logits = logits.float()
    if penalty != 1.0:
        for i, tokens in enumerate(generated):
            if tokens:
                logits[i] = penalise_repeats(logits[i], tokens, penalty)
    chosen = logits.argmax(dim=-1).tolist()
    for i, temperature in enumerate(temperatures):
        if temperature > 0:
            probs = torch.softmax(logits[i] / temperature, dim=-1)
            ordered, index = probs.sort(descending=True)
            ordered[(ordered.cumsum(0) - ordered) > 0.95] = 0
            chosen[i] = int(index[torch.multinomial(ordered / ordered.sum(), 1)])
    return [int(t) for t in chosen]
