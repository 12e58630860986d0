"""The model runtime: one base model (GPTQ 4-bit or plain) with several unmerged LoRA adapters.

Generation runs on ONE worker thread that decodes every request in flight together (continuous
batching, :mod:`adapters.serving._engine`): a request joins the running batch at the next step and leaves
it the step it finishes. Each request carries its own adapter, resolved when it is submitted, so
switching the active adapter never changes a request already queued or in flight; rows with
different adapters share a forward (:mod:`adapters.serving._lora`). Adapters are loaded and unloaded between
steps, an unload once no request submitted with it remains. Members' questions go before background
work (``priority=BACKGROUND``: the gate's evaluation), and past ``max_waiting`` queued questions a
new one is refused with :class:`RuntimeBusy`. Callers get blocking (:meth:`ModelRuntime.generate`),
future (:meth:`ModelRuntime.submit`) and asyncio (:meth:`ModelRuntime.agenerate`) entry points.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from adapters.errors import AdapterError
from adapters.model import gptq_settings, load_base_model, module_shapes
from adapters.prompt import fold_system, plain_transcript, with_system
from adapters.serving import _fastpath, _native
from adapters.serving._base import RuntimeBase
from adapters.serving._choice import ACTIVE, AdapterChoice
from adapters.serving._decode import LlamaDecode
from adapters.serving._engine import ONE_THREAD_DECODE_WORK, BatchEngine
from adapters.serving._lora import check_adapter_dir, read_adapter
from adapters.serving._requests import INTERACTIVE, Generation, Request

log = logging.getLogger(__name__)


def _decode_step_info(decode_step: LlamaDecode | None, native_decode: bool) -> str:
    """How decode steps run, for ``info()``: and when not natively, why not."""
    if decode_step is None:
        return "the model's forward"
    if decode_step.native:
        return "native kernels"
    why = "turned off" if not native_decode else _native.load() or "not for this model"
    return f"written out in Python (native kernels: {why})"


class ModelRuntime(RuntimeBase):
    """A loaded base model + LoRA adapters, batching generations on one worker thread.

    Build with :meth:`load`. ``max_batch``: requests decoded together; ``max_waiting``: members'
    questions queued beyond those before a new one is refused (:class:`RuntimeBusy`)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        base: str,
        device: str,
        backend: str,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        system_prompt: str | None = None,
        repetition_penalty: float = 1.0,
        max_batch: int = 8,
        max_waiting: int = 32,
        fast_paths: bool = True,
        native_decode: bool = True,
    ):
        self._base_model = model
        self._tokenizer = tokenizer
        self._base = base
        self._device = device
        self._backend = backend
        self._shapes = module_shapes(model)
        self.default_max_new_tokens = max_new_tokens
        self.default_temperature = temperature
        self.default_system_prompt = system_prompt
        self._system_turns: dict[str | None, list[int]] = {}  # see _system_turn
        self._adapters: dict[str, Path] = {}
        self._active: str | None = None
        self._lock = threading.Lock()
        # before the model's first forward: gptqmodel repacks each layer's weights for its kernel then
        cpu_fast = fast_paths and device == "cpu"
        self._fast_paths = _fastpath.install(model) if cpu_fast else {}
        decode_step = LlamaDecode.for_model(model, native_decode) if cpu_fast else None
        if cpu_fast:
            self._fast_paths["decode_step"] = _decode_step_info(decode_step, native_decode)
        # Decoding that stops: a small model otherwise loops ("You can't. You can't. ...").
        self._engine = BatchEngine(
            model,
            tokenizer,
            max_batch=max_batch,
            max_waiting=max_waiting,
            repetition_penalty=repetition_penalty,
            one_thread_decode_work=ONE_THREAD_DECODE_WORK if cpu_fast else 0,
            decode_step=decode_step,
        )
        self._worker = threading.Thread(target=self._engine.run, name="loopbot-model", daemon=True)
        self._worker.start()

    # ----- construction and lifecycle -------------------------------------------------------
    @classmethod
    def load(
        cls,
        base: str | Path,
        *,
        device: str = "auto",
        backend: str = "auto",
        dtype: str = "auto",
        threads: int = 0,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        system_prompt: str | None = None,
        repetition_penalty: float = 1.0,
        max_batch: int = 8,
        max_waiting: int = 32,
        fast_paths: bool = True,
        native_decode: bool = True,
    ) -> ModelRuntime:
        """Load a GPTQ or plain checkpoint (local path or hub id) and start the worker thread.

        ``dtype``: see :func:`load_base_model` (``auto``: bf16 for GPTQ on CPU, the fast path).
        ``threads`` > 0 sets torch's CPU threads (process-wide). The keyword defaults apply to
        :meth:`generate` calls that do not pass their own. ``fast_paths=False`` serves without
        :mod:`adapters.serving._fastpath` and decodes every step on all threads (benchmarks compare the
        two); ``native_decode=False`` keeps the fast paths but decodes in Python
        (:mod:`adapters.serving._native`).
        """
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        model, tokenizer = load_base_model(base, device=device, backend=backend, dtype=dtype)
        device_name = (
            str(next(model.parameters()).device.type) if any(True for _ in model.parameters()) else device
        )
        return cls(
            model,
            tokenizer,
            base=str(base),
            device=device_name,
            backend=backend,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            system_prompt=system_prompt,
            repetition_penalty=repetition_penalty,
            max_batch=max_batch,
            max_waiting=max_waiting,
            fast_paths=fast_paths,
            native_decode=native_decode,
        )

    def close(self) -> None:
        """Finish queued and running requests, stop the worker thread (again: a no-op). Later calls
        raise AdapterError."""
        self._engine.close()
        if threading.current_thread() is not self._worker:
            self._worker.join()

    def __enter__(self) -> ModelRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- properties -----------------------------------------------------------------------
    @property
    def base_name(self) -> str:
        """The base model as configured: a path or a hub id."""
        return self._base

    @property
    def tokenizer(self) -> Any:
        """The base model's tokenizer (read-only use; safe from any thread)."""
        return self._tokenizer

    @property
    def repetition_penalty(self) -> float:
        """Penalty on tokens the answer already used (1.0: off); settable between requests."""
        return self._engine.repetition_penalty

    @repetition_penalty.setter
    def repetition_penalty(self, value: float) -> None:
        self._engine.repetition_penalty = value

    def set_limits(self, *, max_batch: int | None = None, max_waiting: int | None = None) -> None:
        """Change how many requests are decoded together and how many members' questions may wait
        (applies from the next step; nothing in flight or queued is dropped)."""
        if max_batch is not None:
            if max_batch < 1:
                raise AdapterError("max_batch must be at least 1.")
            self._engine.max_batch = max_batch
        if max_waiting is not None:
            self._engine.max_waiting = max(0, max_waiting)

    def peak_batch(self, *, reset: bool = False) -> int:
        """The most requests decoded together since the runtime started (or the last reset)."""
        peak = self._engine.peak_batch
        if reset:
            self._engine.peak_batch = 0
        return peak

    def queue_load(self) -> dict[str, int]:
        """Requests being answered (``running``) and waiting (members' and background)."""
        return self._engine.counts()

    def info(self) -> dict[str, Any]:
        """What is loaded: base, quantization, bits, group size, device, backend, adapters, active."""
        raw = getattr(self._base_model.config, "quantization_config", None)
        # After loading, transformers holds a GPTQConfig object; a fresh config holds a dict.
        block = raw if isinstance(raw, dict) else raw.to_dict() if raw is not None else None
        quant = gptq_settings({"quantization_config": block}) or {}
        kernels = sorted(
            {
                type(m).__name__
                for m in self._base_model.modules()
                if "Linear" in type(m).__name__ and type(m).__module__.startswith("gptqmodel")
            }
        )
        return {
            "base": self._base,
            "quantization": "gptq" if quant else None,
            "bits": quant.get("bits"),
            "group_size": quant.get("group_size"),
            "device": self._device,
            "backend": self._backend,
            "kernels": kernels,
            "fast_paths": self._fast_paths,
            "max_batch": self._engine.max_batch,
            "adapters": self.adapters,
            "active": self._active,
        }

    def count_tokens(self, text: str) -> int:
        """Number of tokens ``text`` takes (no special tokens added)."""
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    # ----- adapters -------------------------------------------------------------------------
    def load_adapter(self, name: str, path: Path) -> None:
        """Attach the LoRA adapter in ``path`` under ``name`` (unmerged). AdapterError if missing,
        corrupt, already loaded, or trained for another base. Requests in flight are not disturbed."""
        self._require_new(name)
        config = check_adapter_dir(Path(path), self._shapes, self._base)
        try:
            deltas = read_adapter(Path(path), config)
        except AdapterError:
            raise
        except Exception as error:  # safetensors/torch raise many types; the operator needs the path
            raise AdapterError(f"Cannot load adapter {path}: {error}. Retrain or restore it.") from None
        self._engine.call(lambda: self._engine.bank.add(name, deltas)).result()
        self._adapters[name] = Path(path)
        log.info("adapter %s loaded from %s (r=%s)", name, path, config.get("r"))

    def unload_adapter(self, name: str) -> None:
        """Detach adapter ``name`` once no request submitted with it remains (new ones cannot use it)."""
        self._require_loaded(name)
        with self._lock:
            if self._active == name:
                self._active = None
            self._adapters.pop(name)
        engine = self._engine

        def remove() -> None:
            engine.bank.remove(name)
            engine.prefixes.drop(name)

        engine.call(remove, ready=lambda: not engine.uses(name)).result()

    # ----- generation -----------------------------------------------------------------------
    def render_prompt(self, messages: list[dict[str, str]], system_prompt: str | None = None) -> str:
        """The exact prompt text the model sees: the tokenizer's chat template + system prompt."""
        chat = with_system(messages, self.default_system_prompt if system_prompt is None else system_prompt)
        if not getattr(self._tokenizer, "chat_template", None):
            return plain_transcript(chat) + "\nassistant: "
        try:
            return str(self._tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
        except Exception:  # some templates reject a system role: fold it into the first user turn
            if len(chat) < 2 or chat[0]["role"] != "system":
                raise
            return str(
                self._tokenizer.apply_chat_template(
                    fold_system(chat), tokenize=False, add_generation_prompt=True
                )
            )

    def _system_turn(self, system_prompt: str | None) -> list[int]:
        """The prompt tokens every conversation with ``system_prompt`` starts with (the template's
        system turn): the common prefix of two renderings that differ only in the question."""
        key = self.default_system_prompt if system_prompt is None else system_prompt
        if key not in self._system_turns:
            a, b = ([{"role": "user", "content": q}] for q in ("a", "b"))
            tokenize = self._tokenizer
            ids = [
                tokenize(self.render_prompt(m, system_prompt), add_special_tokens=False)["input_ids"]
                for m in (a, b)
            ]
            common = next((i for i, (x, y) in enumerate(zip(*ids, strict=False)) if x != y), 0)
            self._system_turns = {**dict(list(self._system_turns.items())[-15:]), key: list(ids[0][:common])}
        return self._system_turns[key]

    def submit(
        self,
        messages: list[dict[str, str]],
        *,
        system_prompt: str | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        stop: Sequence[str] = (),
        adapter: AdapterChoice | str | None = ACTIVE,
        on_token: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
        priority: int = INTERACTIVE,
    ) -> concurrent.futures.Future[Generation]:
        """Queue a generation; the future resolves to a :class:`Generation`.

        ``adapter``: an :class:`AdapterChoice` (several names stack, their LoRA deltas added), one
        adapter's name, or None for the base model; it is fixed now (:data:`ACTIVE`: the active one at
        this moment). ``on_token`` is called on the worker thread with each new piece of text. Setting ``cancel`` stops early
        (the answer so far is the result). ``priority=BACKGROUND`` for work no member waits on.
        RuntimeBusy when too many members' questions already wait.
        """
        if not messages:
            raise AdapterError("Nothing to answer: the message list is empty.")
        choice = self._resolve(adapter)
        limit = self.default_max_new_tokens if max_new_tokens is None else max_new_tokens
        if limit < 1:
            raise AdapterError("max_new_tokens must be at least 1.")
        prompt = self.render_prompt(messages, system_prompt)
        ids = list(self._tokenizer(prompt, add_special_tokens=False)["input_ids"])
        prefix = self._system_turn(system_prompt)
        request = Request(
            prompt_ids=ids,
            shared_prefix=len(prefix) if len(ids) > len(prefix) and ids[: len(prefix)] == prefix else 0,
            adapter=choice,
            max_new_tokens=limit,
            temperature=self.default_temperature if temperature is None else temperature,
            stop=tuple(stop),
            on_token=on_token,
            cancel=cancel or threading.Event(),
            priority=priority,
        )
        return self._engine.offer(request)
