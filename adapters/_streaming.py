"""Streaming for the runtime: incremental decoding, stop strings held back, early stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any


class _Streamer:
    """A transformers streamer: decodes the new tokens, hides stop strings, feeds ``on_token``.

    Text that could be the start of a stop string is held back until it is known not to be one,
    so the callback never sees text the final answer does not contain.
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt_len: int,
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
        self.prompt_len = prompt_len
        self.ids: list[int] = []
        self.skipped_prompt = False
        self.text = ""
        self.emitted = 0
        self.stopped_at: int | None = None
        self.started = time.perf_counter()
        self.first_token: float | None = None

    def put(self, value: Any) -> None:
        if not self.skipped_prompt:  # generate() first puts the prompt
            self.skipped_prompt = True
            return
        if self.first_token is None:
            self.first_token = time.perf_counter() - self.started
        self.ids.extend(int(t) for t in value.reshape(-1).tolist())
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for s in self.stop:
            index = self.text.find(s)
            if index != -1 and (self.stopped_at is None or index < self.stopped_at):
                self.stopped_at = index
        self._emit(final=False)

    def end(self) -> None:
        self._emit(final=True)

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


class _StopCriteria:
    """Stops generation once the streamer saw a stop string or the request was cancelled."""

    def __init__(self, streamer: _Streamer):
        self.streamer = streamer

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.streamer.should_stop(), dtype=torch.bool)


class _AnswerRepetitionPenalty:
    """A logits processor: tokens the answer already used are made less likely (CTRL-style penalty).

    Unlike transformers' ``repetition_penalty``, the prompt's tokens are not penalised: in a RAG
    prompt those are the facts the answer should copy (measured: penalising them made the default
    model invent instead of quoting). It breaks the small model's loops ("You can't. You can't. …")."""

    def __init__(self, prompt_len: int, penalty: float) -> None:
        self.prompt_len = prompt_len
        self.penalty = penalty

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        generated = input_ids[:, self.prompt_len :]
        if generated.shape[1] == 0:
            return scores
        seen = torch.gather(scores, 1, generated)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return scores.scatter(1, generated, seen)
