"""The model runtime: one base model (GPTQ 4-bit or plain) with several unmerged LoRA adapters.

Every generation runs on ONE worker thread fed by a queue. A job carries its own adapter choice,
resolved when it is submitted, so switching the active adapter never changes a request already
queued or in flight, and adapters are loaded/unloaded by jobs on the same queue, in order, so
nothing touches the model while it generates. Callers get blocking (:meth:`ModelRuntime.generate`),
future (:meth:`ModelRuntime.submit`) and asyncio (:meth:`ModelRuntime.agenerate`) entry points.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from adapters._loading import check_adapter_dir, gptq_settings, load_base_model, module_shapes
from adapters._streaming import _AnswerRepetitionPenalty, _StopCriteria, _Streamer
from adapters.errors import AdapterError
from adapters.prompt import fold_system, plain_transcript, with_system

log = logging.getLogger(__name__)

__all__ = ["ACTIVE", "Generation", "ModelRuntime", "Runtime", "load_base_model"]

ACTIVE: Any = object()  # sentinel: "use the adapter active when the request is submitted"


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


class Runtime(Protocol):
    """What serving needs from a model runtime: in-process :class:`ModelRuntime` and
    :class:`adapters.remote.RemoteRuntime` both provide it."""

    @property
    def active_adapter(self) -> str | None: ...

    @property
    def adapters(self) -> list[str]: ...

    def set_active_adapter(self, name: str | None) -> None: ...

    def load_adapter(self, name: str, path: Path) -> None: ...

    def unload_adapter(self, name: str) -> None: ...

    def count_tokens(self, text: str) -> int: ...

    def info(self) -> dict[str, Any]: ...

    @property
    def submit(self) -> Callable[..., concurrent.futures.Future[Generation]]:
        """Queue a generation (see :meth:`ModelRuntime.submit` for the arguments)."""
        ...

    def generate(self, messages: list[dict[str, str]], **kwargs: Any) -> Generation: ...

    async def agenerate(self, messages: list[dict[str, str]], **kwargs: Any) -> Generation: ...

    def close(self) -> None: ...


@dataclass
class _Job:
    run: Callable[[], Any]
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


class _AdapterChoice:
    """What every runtime shares: the loaded adapter names, the active one, and the blocking and
    asyncio wrappers around ``submit`` (in-process :class:`ModelRuntime` and
    :class:`adapters.remote.RemoteRuntime` differ only in how ``submit`` generates)."""

    _adapters: dict[str, Path]
    _active: str | None
    _lock: threading.Lock

    submit: Callable[..., concurrent.futures.Future[Generation]]  # each runtime's own way to generate

    @property
    def active_adapter(self) -> str | None:
        """The adapter new requests use by default; None means the base model alone."""
        return self._active

    @property
    def adapters(self) -> list[str]:
        """Names of the loaded adapters, in load order."""
        return list(self._adapters)

    def set_active_adapter(self, name: str | None) -> None:
        """Make ``name`` the default adapter of new requests (None: base model only)."""
        if name is not None and name not in self._adapters:
            raise AdapterError(
                f"No adapter named {name!r} is loaded (loaded: {', '.join(self._adapters) or 'none'})."
            )
        with self._lock:
            self._active = name

    def _resolve_adapter(self, adapter: Any) -> str | None:
        name = self._active if adapter is ACTIVE else adapter
        if name is not None and name not in self._adapters:
            raise AdapterError(
                f"No adapter named {name!r} is loaded (loaded: {', '.join(self._adapters) or 'none'})."
            )
        return name

    def generate(self, messages: list[dict[str, str]], **kwargs: Any) -> Generation:
        """Blocking :meth:`submit`; safe to call from many threads at once."""
        return self.submit(messages, **kwargs).result()

    async def agenerate(self, messages: list[dict[str, str]], **kwargs: Any) -> Generation:
        """Generate without blocking the event loop; ``on_token`` is called on the loop thread.

        Cancelling the awaiting task stops the generation at the next token.
        """
        loop = asyncio.get_running_loop()
        callback = kwargs.pop("on_token", None)
        if callback is not None:
            kwargs["on_token"] = lambda piece: loop.call_soon_threadsafe(callback, piece)
        cancel = threading.Event()
        future = self.submit(messages, cancel=cancel, **kwargs)
        try:
            result: Generation = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            cancel.set()
            raise
        # Let the callbacks scheduled by the worker run before the caller sees the result.
        await asyncio.sleep(0)
        return result


class ModelRuntime(_AdapterChoice):
    """A loaded base model + LoRA adapters, generating on one worker thread. Build with :meth:`load`."""

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
    ):
        self._base_model = model
        self._model = model  # becomes a PeftModel once an adapter is loaded
        self._tokenizer = tokenizer
        self._base = base
        self._device = device
        self._backend = backend
        self._shapes = module_shapes(model)  # before peft wraps any layer
        self.default_max_new_tokens = max_new_tokens
        self.default_temperature = temperature
        self.default_system_prompt = system_prompt
        # Decoding that stops: a small model otherwise loops ("You can't. You can't. ...").
        self.repetition_penalty = repetition_penalty
        self._adapters: dict[str, Path] = {}
        self._active: str | None = None
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="loopbot-model", daemon=True)
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
    ) -> ModelRuntime:
        """Load a GPTQ or plain checkpoint (local path or hub id) and start the worker thread.

        ``dtype``: see :func:`load_base_model` (``auto``: bf16 for GPTQ on CPU, the fast path).
        ``threads`` > 0 sets torch's CPU threads (process-wide). The keyword defaults apply to
        :meth:`generate` calls that do not pass their own.
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
        )

    def close(self) -> None:
        """Finish queued jobs, stop the worker thread. Later calls raise AdapterError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        if threading.current_thread() is not self._worker:
            self._worker.join()

    def __enter__(self) -> ModelRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                job.future.set_result(job.run())
            except BaseException as error:  # the caller gets it; the worker keeps serving
                job.future.set_exception(error)

    def _enqueue(self, run: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        job = _Job(run)
        with self._lock:
            if self._closed:
                raise AdapterError("The model runtime is closed: build a new one.")
            self._queue.put(job)
        return job.future

    # ----- properties -----------------------------------------------------------------------
    @property
    def base_name(self) -> str:
        """The base model as configured: a path or a hub id."""
        return self._base

    @property
    def tokenizer(self) -> Any:
        """The base model's tokenizer (read-only use; safe from any thread)."""
        return self._tokenizer

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
            "adapters": self.adapters,
            "active": self._active,
        }

    def count_tokens(self, text: str) -> int:
        """Number of tokens ``text`` takes (no special tokens added)."""
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    # ----- adapters -------------------------------------------------------------------------
    def load_adapter(self, name: str, path: Path) -> None:
        """Attach the LoRA adapter in ``path`` under ``name`` (unmerged). AdapterError if missing,
        corrupt, already loaded, or trained for another base. Runs after already queued requests."""
        if not name or name in self._adapters:
            raise AdapterError(f"An adapter named {name!r} is already loaded: use a new (versioned) name.")
        config = check_adapter_dir(Path(path), self._shapes, self._base)
        self._enqueue(lambda: self._attach(name, Path(path), config)).result()

    def _attach(self, name: str, path: Path, config: dict[str, Any]) -> None:
        from peft import PeftModel

        try:
            if self._model is self._base_model:
                self._model = PeftModel.from_pretrained(
                    self._base_model, str(path), adapter_name=name, is_trainable=False
                )
            else:
                self._model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        except Exception as error:  # peft raises many types; the message matters to the operator
            raise AdapterError(f"Cannot load adapter {path}: {error}. Retrain or restore it.") from None
        self._model.eval()
        self._adapters[name] = path
        log.info("adapter %s loaded from %s (r=%s)", name, path, config.get("r"))

    def unload_adapter(self, name: str) -> None:
        """Detach adapter ``name`` after the requests queued before this call have finished."""
        if name not in self._adapters:
            raise AdapterError(
                f"No adapter named {name!r} is loaded (loaded: {', '.join(self._adapters) or 'none'})."
            )
        with self._lock:
            if self._active == name:
                self._active = None
        self._enqueue(lambda: self._detach(name)).result()

    def _detach(self, name: str) -> None:
        self._adapters.pop(name, None)
        if not self._adapters:
            # Deleting peft's last adapter leaves a broken wrapper: unwrap to the plain base instead.
            self._model = self._model.unload()
            self._base_model = self._model
        else:
            self._model.delete_adapter(name)

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

    def submit(
        self,
        messages: list[dict[str, str]],
        *,
        system_prompt: str | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        stop: Sequence[str] = (),
        adapter: Any = ACTIVE,
        on_token: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> concurrent.futures.Future[Generation]:
        """Queue a generation; the future resolves to a :class:`Generation`.

        The adapter is fixed now (``ACTIVE`` = the active one at this moment). ``on_token`` is
        called on the worker thread with each new piece of text. Setting ``cancel`` stops early.
        """
        if not messages:
            raise AdapterError("Nothing to answer: the message list is empty.")
        name = self._resolve_adapter(adapter)
        prompt = self.render_prompt(messages, system_prompt)
        limit = self.default_max_new_tokens if max_new_tokens is None else max_new_tokens
        temp = self.default_temperature if temperature is None else temperature
        if limit < 1:
            raise AdapterError("max_new_tokens must be at least 1.")
        event = cancel or threading.Event()
        return self._enqueue(lambda: self._generate(prompt, name, limit, temp, tuple(stop), on_token, event))

    def _generate(
        self,
        prompt: str,
        adapter: str | None,
        max_new_tokens: int,
        temperature: float,
        stop: tuple[str, ...],
        on_token: Callable[[str], None] | None,
        cancel: threading.Event,
    ) -> Generation:
        import torch
        from transformers import StoppingCriteriaList

        encoded = self._tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        device = next(self._base_model.parameters()).device
        encoded = {k: v.to(device) for k, v in encoded.items()}
        prompt_len = int(encoded["input_ids"].shape[1])
        streamer = _Streamer(self._tokenizer, prompt_len, stop, on_token, cancel)
        options: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([_StopCriteria(streamer)]),
            "pad_token_id": self._tokenizer.pad_token_id,
        }
        if self.repetition_penalty != 1.0:
            from transformers import LogitsProcessorList

            options["logits_processor"] = LogitsProcessorList(
                [_AnswerRepetitionPenalty(prompt_len, self.repetition_penalty)]
            )
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature, top_p=0.95)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode(), self._adapter_context(adapter):
            self._model.generate(**encoded, **options)
        streamer.end()
        seconds = time.perf_counter() - streamer.started
        eos = (
            self._tokenizer.convert_tokens_to_ids(self._tokenizer.eos_token)
            if self._tokenizer.eos_token
            else None
        )
        completion = len([t for t in streamer.ids if t != eos])
        return Generation(
            text=streamer.final_text().strip(),
            adapter=adapter,
            prompt_tokens=prompt_len,
            completion_tokens=completion,
            seconds=seconds,
            first_token_seconds=streamer.first_token,
        )

    def _adapter_context(self, adapter: str | None) -> contextlib.AbstractContextManager[Any]:
        """Runs on the worker thread: select ``adapter`` or disable all adapters for this job."""
        if self._model is self._base_model:
            return contextlib.nullcontext()
        if adapter is None:
            return self._model.disable_adapter()  # type: ignore[no-any-return]
        self._model.set_adapter(adapter)
        return contextlib.nullcontext()
