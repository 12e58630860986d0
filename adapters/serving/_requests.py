"""What the engine is asked and answers: a :class:`Request` (its prompt, its :class:`AdapterChoice`,
its limits and callbacks), the :class:`Generation` it resolves to, and the two priorities."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from adapters.errors import AdapterError
from adapters.serving._choice import AdapterChoice
from adapters.serving._streaming import _Streamer

INTERACTIVE = 0  # a member is waiting for it
BACKGROUND = 1  # evaluation and other work nobody watches: runs when members' questions leave room
# Prompts admitted in the same step are prefilled in one forward, left-padded to the longest, while
# the padding stays under this share of their tokens and the forward under PREFILL_MAX_TOKENS
# (bench/prefill_batching.py): 8 short asks at once get their first tokens twice as soon and decode
# 3-11 % faster; ~1,000-token RAG prompts four to a 4,096-token forward finished a second later (the
# padded prompts lose SDPA's causal kernel), so long prompts go alone.
PREFILL_MAX_PADDING = 0.25
PREFILL_MAX_TOKENS = 1024
# A prompt longer than this is prefilled this many tokens a step while other rows are answering, each
# chunk followed by a decode step of those rows (as vLLM's chunked prefill): their answers keep
# streaming while a grounded question is read, and long prompts get their first tokens in the order
# they arrived. With nothing else to decode the rest of the prompt goes in one forward. A ~1,000-token
# prompt took 2.1 s in one forward, 2.3 s in chunks of 512 and 2.7-2.9 s in chunks of 256 (fp32
# prompt weights on a Zen 3 host, Dec 8: smaller matmuls run below the CPU's peak).
PREFILL_CHUNK = 512


class RuntimeBusy(AdapterError):
    """Too many questions are already waiting; the message says how many and what to do."""


@dataclass(frozen=True)
class Generation:
    """One finished generation: the text (stop string excluded) and how it was produced."""

    text: str
    adapter: str | None
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    first_token_seconds: float | None

    @property
    def tokens_per_second(self) -> float:
        """Decode speed after the first token (0 when fewer than two tokens were produced)."""
        if self.first_token_seconds is None or self.completion_tokens < 2:
            return 0.0
        return (self.completion_tokens - 1) / max(self.seconds - self.first_token_seconds, 1e-9)


@dataclass(eq=False)
class Request:
    """One generation: its prompt, its adapters (resolved at submission), its limits and its callbacks."""

    prompt_ids: list[int]
    adapter: AdapterChoice  # resolved (never ACTIVE): applied together, their deltas add up
    max_new_tokens: int
    temperature: float
    stop: tuple[str, ...]
    on_token: Callable[[str], None] | None
    cancel: threading.Event
    priority: int = INTERACTIVE
    future: concurrent.futures.Future[Generation] = field(default_factory=concurrent.futures.Future)
    # while it runs
    streamer: _Streamer | None = None
    generated: list[int] = field(default_factory=list)
    position: int = 0  # position of the next token fed to the model
    shared_prefix: int = 0  # leading prompt tokens other requests share (the system turn): cached
    prompt_cache: Any = None  # a long prompt's cache while it is prefilled chunk by chunk
    prefilled: int = 0  # prompt tokens in prompt_cache

    def generation(self) -> Generation:
        """What it resolves to: its text so far (the streamer ended) and how it was produced."""
        streamer = self.streamer
        assert streamer is not None
        streamer.end()
        return Generation(
            text=streamer.final_text().strip(),
            adapter="+".join(self.adapter.names) or None,
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=len(self.generated),
            seconds=time.perf_counter() - streamer.started,
            first_token_seconds=streamer.first_token,
        )


@dataclass
class _Job:
    run: Callable[[], Any]
    ready: Callable[[], bool] = lambda: True  # a job waits until this holds (e.g. an adapter falls idle)
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


def prefill_groups(requests: Sequence[Request]) -> list[list[Request]]:
    """``requests`` grouped for prefilling together: by prompt length, a group grows while padding
    every prompt to its longest costs at most ``PREFILL_MAX_PADDING`` of its tokens and the forward
    stays within ``PREFILL_MAX_TOKENS`` (a long RAG prompt is not held up by, nor pads, short ones)."""
    groups: list[list[Request]] = []
    for request in sorted(requests, key=lambda r: len(r.prompt_ids)):
        group = groups[-1] if groups else None
        if group is not None:
            longest = len(request.prompt_ids)  # sorted: the newcomer is the longest
            tokens = sum(len(r.prompt_ids) for r in group) + longest
            padded = longest * (len(group) + 1)
            if padded <= (1 + PREFILL_MAX_PADDING) * tokens and padded <= PREFILL_MAX_TOKENS:
                group.append(request)
                continue
        groups.append([request])
    return groups
