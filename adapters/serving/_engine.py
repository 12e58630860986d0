"""Continuous batching for the in-process runtime: every request in flight is decoded together.

One worker thread runs :meth:`BatchEngine.run`. Each step it runs the queued control jobs (adapter
loads and unloads), lets finished and cancelled requests leave, prefills new requests (members'
questions before background work such as the gate's evaluation), then decodes one token for every
row at once, each row with its own adapters (:class:`adapters.serving._lora.LoraBank`).

Rows of different lengths share one key/value cache, left-padded: a request that joins mid-generation
is prefilled (in one forward with the others admitted in the same step whose prompts are of a similar
length, see :func:`prefill_groups`; a prompt longer than ``PREFILL_CHUNK`` a chunk a step, the batch
decoding between its chunks: :mod:`adapters.serving._prefill`) and its cache is padded to the batch's
length and appended; the attention mask hides the padding and each row keeps its own positions. When
rows leave, columns that are padding for every remaining row are dropped.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import inspect
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from adapters._memory import release_free_memory
from adapters.errors import AdapterError
from adapters.serving._lora import LoraBank
from adapters.serving._prefill import PrefixCache, chunk_forward, group_forward
from adapters.serving._requests import (
    BACKGROUND,
    INTERACTIVE,
    PREFILL_CHUNK,
    Generation,
    Request,
    RuntimeBusy,
    _Job,
    prefill_groups,
)
from adapters.serving._streaming import _Streamer, choose_tokens

log = logging.getLogger(__name__)

# A decode step whose rows x cache length is at most this runs on one CPU thread (see BatchEngine).
ONE_THREAD_DECODE_WORK = 8192


class BatchEngine:
    """The scheduler and the batched decode loop of one model (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch: int = 8,
        max_waiting: int = 32,
        repetition_penalty: float = 1.0,
        one_thread_decode_work: int = ONE_THREAD_DECODE_WORK,
        decode_step: Callable[[Any, Any, Any, Any], Any] | None = None,
    ):
        if max_batch < 1:
            raise AdapterError("max_batch must be at least 1.")
        self.model = model
        self.tokenizer = tokenizer
        self.bank = LoraBank(model)
        self.prefixes = PrefixCache()  # shared prompt prefixes' keys and values, per adapter stack
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.repetition_penalty = repetition_penalty
        self.peak_batch = 0  # the most rows decoded together so far (benchmarks and tests read it)
        config = getattr(model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None)
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self._eos = eos_ids
        self._device = next(model.parameters()).device
        # Prompts run on every CPU thread torch was given; small decode steps on one. Measured in the
        # worker thread (bench/serving.py), a parallel region wakes the other thread for each of the
        # ~400 small ops of a step: one row decoded 38 tok/s on one thread vs 25 on two, eight short
        # rows 155 vs 115; at 4 rows x 1,000 tokens still 72 vs 63; at 16 x 1,000 two threads win.
        import torch

        self._threads = torch.get_num_threads()
        self.one_thread_decode_work = one_thread_decode_work  # 0: every step on all threads
        # (ids, positions, mask, cache) -> next-token logits for a decode step (adapters.serving._decode.LlamaDecode);
        # None: the model's forward
        self.decode_step = decode_step
        # transformers 5.24 renamed the forward's ``past_key_values`` to ``cache`` (the old name warns
        # until 5.40): pass whichever this version takes.
        parameters = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in parameters else "past_key_values"
        self._lock = threading.RLock()  # job readiness checks re-enter it
        self._wake = threading.Condition(self._lock)
        self._waiting: list[tuple[int, int, Request]] = []
        self._order = itertools.count()
        self._jobs: deque[_Job] = deque()
        self._closing = False
        self._rows: list[Request] = []
        self._starting: list[Request] = []  # admitted this step, being prefilled
        self._chunked: deque[Request] = deque()  # long prompts prefilled a chunk a step, oldest first
        self._cache: Any = None
        self._mask: Any = None

    # ----- called from any thread ----------------------------------------------------------
    def offer(self, request: Request) -> concurrent.futures.Future[Generation]:
        """Queue ``request``; RuntimeBusy when ``max_waiting`` members' questions already wait."""
        with self._wake:
            self._refuse_if_closing()
            if request.priority == INTERACTIVE:
                ahead = sum(1 for p, _, _ in self._waiting if p == INTERACTIVE)
                must_wait = self._running() + ahead >= self.max_batch
                if must_wait and ahead >= self.max_waiting:
                    raise RuntimeBusy(
                        f"I am busy writing {self._running()} answer(s), with {ahead} question(s) waiting "
                        "before yours. Ask again in a minute."
                    )
            heapq.heappush(self._waiting, (request.priority, next(self._order), request))
            self._wake.notify()
        return request.future

    def call(
        self, run: Callable[[], Any], ready: Callable[[], bool] = lambda: True
    ) -> concurrent.futures.Future[Any]:
        """Run ``run`` on the worker thread between two steps, once ``ready()`` holds."""
        job = _Job(run, ready)
        with self._wake:
            self._refuse_if_closing()
            self._jobs.append(job)
            self._wake.notify()
        return job.future

    def _refuse_if_closing(self) -> None:
        if self._closing:
            raise AdapterError("The model runtime is closed: build a new one.")

    def close(self) -> None:
        """Finish what is queued and in flight, then let :meth:`run` return."""
        with self._wake:
            self._closing = True
            self._wake.notify()

    def uses(self, adapter: str) -> bool:
        """Whether a queued or running request was submitted with ``adapter``."""
        with self._lock:
            waiting = [r for _, _, r in self._waiting]
        running = [*self._rows, *self._starting, *self._chunked]
        return any(adapter in r.adapter.names for r in [*waiting, *running])

    def counts(self) -> dict[str, int]:
        """How many requests run and wait, by kind."""
        with self._lock:
            waiting = [p for p, _, _ in self._waiting]
        return {
            "running": self._running(),
            "waiting": waiting.count(INTERACTIVE),
            "background_waiting": waiting.count(BACKGROUND),
        }

    def _running(self) -> int:
        return len(self._rows) + len(self._starting) + len(self._chunked)

    # ----- the worker thread ----------------------------------------------------------------
    def run(self) -> None:
        """The worker loop: returns once closed and everything queued has finished."""
        import torch

        with torch.inference_mode():
            while True:
                with self._wake:
                    busy = lambda: self._rows or self._chunked or self._waiting  # noqa: E731
                    while not (busy() or self._ready_jobs() or self._closing):
                        self._wake.wait(timeout=0.5 if self._jobs else None)
                    if self._closing and not (busy() or self._jobs):
                        return
                    jobs = self._ready_jobs()
                    for job in jobs:
                        self._jobs.remove(job)
                for job in jobs:
                    self._run_job(job)
                self._step()

    def _ready_jobs(self) -> list[_Job]:
        return [job for job in self._jobs if job.ready()]

    @staticmethod
    def _run_job(job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.run())
        except BaseException as error:  # the caller gets it; the worker keeps serving
            job.future.set_exception(error)

    def _step(self) -> None:
        self._leave([r for r in self._rows if r.cancel.is_set()])
        self._starting = self._admit()
        long = [r for r in self._starting if len(r.prompt_ids) - r.shared_prefix > PREFILL_CHUNK]
        self._chunked.extend(long)  # read a chunk a step, in arrival order
        self._starting = [r for r in self._starting if r not in long]
        for group in prefill_groups(self._starting):
            self._prefill(group)
        self._starting = []
        if self._chunked:
            self._prefill_chunk(self._chunked[0])
        if self._rows:
            try:
                self._decode()
            except Exception as error:  # every row of the failed step gets the error; serving goes on
                log.exception("batched decode step failed")
                for request in self._rows:
                    if not request.future.done():
                        request.future.set_exception(AdapterError(f"Generation failed: {error}"))
                self._rows, self._cache, self._mask = [], None, None

    def _admit(self) -> list[Request]:
        """Take waiting requests into free rows: members' questions first, background work only into
        at most half the rows (so a member who arrives during an evaluation finds room soon)."""
        admitted: list[Request] = []
        background = sum(1 for r in self._rows if r.priority != INTERACTIVE)
        with self._lock:
            while self._waiting and len(self._rows) + len(self._chunked) + len(admitted) < self.max_batch:
                priority, _, request = self._waiting[0]
                if priority != INTERACTIVE and background >= max(1, self.max_batch // 2):
                    break
                heapq.heappop(self._waiting)
                if request.cancel.is_set() or not request.future.set_running_or_notify_cancel():
                    if not request.future.done():  # cancelled while waiting: an empty answer
                        request.streamer = _Streamer(self.tokenizer, (), None, request.cancel)
                        request.future.set_result(request.generation())
                    continue
                background += priority != INTERACTIVE
                admitted.append(request)
        return admitted

    def _prefill(self, group: list[Request]) -> None:
        """Run the prompts of ``group`` in one forward, pick each one's first token, then join the batch."""
        for request in group:
            request.streamer = _Streamer(self.tokenizer, request.stop, request.on_token, request.cancel)
        self._use_threads(self._threads)
        try:
            args = (self.model, self._cache_arg, self._device)
            logits, cache, mask = group_forward(*args, group, self.bank, self.prefixes)
            tokens = self._choose(logits, group)
        except Exception as error:
            log.exception("prefill failed")
            for request in group:
                request.future.set_exception(AdapterError(f"Generation failed: {error}"))
            return
        self._start(group, tokens, cache, mask)

    def _prefill_chunk(self, request: Request) -> None:
        """The next chunk of a long prompt (the oldest); after its last, the first token and the batch."""
        if request.cancel.is_set() or request.future.done():
            self._chunked.popleft()
            request.streamer = request.streamer or _Streamer(self.tokenizer, (), None, request.cancel)
            self._complete(request)
            return
        if request.streamer is None:
            request.streamer = _Streamer(self.tokenizer, request.stop, request.on_token, request.cancel)
        self._use_threads(self._threads)
        try:
            args = (self.model, self._cache_arg, self._device, request, self.bank, self.prefixes)
            # the rest at once when no row waits for a decode step
            logits = chunk_forward(*args, PREFILL_CHUNK if self._rows else len(request.prompt_ids))
            tokens = None if logits is None else self._choose(logits, [request])
        except Exception as error:
            log.exception("prefill failed")
            self._chunked.popleft()
            request.future.set_exception(AdapterError(f"Generation failed: {error}"))
            return
        if tokens is not None:
            import torch

            self._chunked.popleft()
            cache, request.prompt_cache = request.prompt_cache, None
            self._start([request], tokens, cache, torch.ones(1, request.prefilled, dtype=torch.long))

    def _start(self, group: list[Request], tokens: list[int], cache: Any, mask: Any) -> None:
        """Each prompt's first token; those not done with it join the batch (their rows of ``cache``)."""
        import torch

        joining = []
        for row, (request, token) in enumerate(zip(group, tokens, strict=True)):
            request.position = len(request.prompt_ids)
            if self._accept(request, token):
                joining.append(row)
        if not joining:
            return
        mask = mask.to(self._device)
        if len(joining) < mask.shape[0]:  # some answered with their first token: their rows go
            index = torch.tensor(joining, device=self._device)
            mask = mask.index_select(0, index)
            for layer in cache.layers:
                layer.keys, layer.values = (
                    layer.keys.index_select(0, index),
                    layer.values.index_select(0, index),
                )
        if self._cache is None:
            self._rows, self._cache, self._mask = [group[row] for row in joining], cache, mask
        else:
            from adapters.serving._cache import join_rows

            self._mask = join_rows(self._cache, self._mask, cache, mask)
            self._rows.extend(group[row] for row in joining)

    def _decode(self) -> None:
        import torch

        rows = self._rows
        self.peak_batch = max(self.peak_batch, len(rows))
        ids = torch.tensor([[r.generated[-1]] for r in rows], device=self._device)
        positions = torch.tensor([[r.position] for r in rows], device=self._device)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(rows), 1))], dim=1)
        self.bank.use([r.adapter.names for r in rows])
        small = len(rows) * self._mask.shape[1] <= self.one_thread_decode_work
        self._use_threads(1 if small else self._threads)
        if self.decode_step is not None:
            logits = self.decode_step(ids, positions, self._mask, self._cache)
        else:
            logits = self.model(
                input_ids=ids,
                attention_mask=self._mask,
                position_ids=positions,
                use_cache=True,
                **{self._cache_arg: self._cache},
            ).logits[:, -1, :]
        tokens = self._choose(logits, rows)
        done = []
        for request, token in zip(rows, tokens, strict=True):
            request.position += 1
            if not self._accept(request, token):
                done.append(request)
        self._leave(done)

    @staticmethod
    def _use_threads(count: int) -> None:
        import torch

        if torch.get_num_threads() != count:
            torch.set_num_threads(count)

    def _choose(self, logits: Any, rows: Sequence[Request]) -> list[int]:
        """The next token of each row (see :func:`choose_tokens`)."""
        return choose_tokens(
            logits, [r.generated for r in rows], [r.temperature for r in rows], self.repetition_penalty
        )

    def _accept(self, request: Request, token: int) -> bool:
        """Record ``token`` for ``request``; False (and the request is answered) when it is done."""
        streamer = request.streamer
        assert streamer is not None
        if token in self._eos:
            self._complete(request)
            return False
        request.generated.append(token)
        try:
            streamer.put_ids([token])
        except Exception as error:  # the caller's on_token failed: this request ends, the batch goes on
            request.future.set_exception(error)
            return False
        if streamer.should_stop() or len(request.generated) >= request.max_new_tokens:
            self._complete(request)
            return False
        return True

    def _complete(self, request: Request) -> None:
        if not request.future.done():
            request.future.set_result(request.generation())

    def _leave(self, leaving: list[Request]) -> None:
        """Drop ``leaving`` from the batch (answering cancelled ones with what they have so far)."""
        if not leaving:
            return
        import torch

        for request in leaving:
            self._complete(request)  # a no-op for those already answered
        keep = [i for i, r in enumerate(self._rows) if r not in leaving]
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._cache, self._mask = None, None
            if not self._waiting:  # idle: the batch's KV cache and activations go back to the OS
                release_free_memory()
            return
        index = torch.tensor(keep, device=self._device)
        mask = self._mask.index_select(0, index)
        start = int(mask.any(dim=0).int().argmax())  # columns before it are padding for every row
        self._mask = mask[:, start:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
