"""What every runtime is: the :class:`Runtime` protocol serving codes against, and the part the
in-process runtime and the remote one share (:class:`RuntimeBase`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from adapters.errors import AdapterError
from adapters.serving._choice import AdapterChoice
from adapters.serving._requests import Generation


class Runtime(Protocol):
    """What serving needs from a model runtime: in-process :class:`adapters.serving.ModelRuntime` and
    :class:`adapters.serving.RemoteRuntime` both provide it."""

    @property
    def active_adapter(self) -> str | None: ...

    @property
    def adapters(self) -> list[str]: ...

    def set_active_adapter(self, name: str | None) -> None: ...

    def load_adapter(self, name: str, path: Path) -> None: ...

    def adapter_path(self, name: str) -> Path | None: ...

    def unload_adapter(self, name: str) -> None: ...

    def count_tokens(self, text: str) -> int: ...

    def info(self) -> dict[str, Any]: ...

    @property
    def submit(self) -> Callable[..., concurrent.futures.Future[Generation]]:
        """Queue a generation (see :meth:`adapters.serving.ModelRuntime.submit` for the arguments)."""
        ...

    def generate(self, messages: list[dict[str, str]], **kwargs: Any) -> Generation: ...

    async def agenerate(self, messages: list[dict[str, str]], **kwargs: Any) -> Generation: ...

    def close(self) -> None: ...


class RuntimeBase:
    """What every runtime shares: the loaded adapter names, the active one, resolving a request's
    :class:`AdapterChoice`, and the blocking and asyncio wrappers around ``submit`` (the in-process
    and the remote runtime differ only in how ``submit`` generates)."""

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
        if name is not None:
            self._require_loaded(name)
        with self._lock:
            self._active = name

    def adapter_path(self, name: str) -> Path | None:
        """The directory the adapter loaded as ``name`` came from (None: not loaded)."""
        return self._adapters.get(name)

    def _require_new(self, name: str) -> None:
        """AdapterError unless ``name`` is free to load an adapter under."""
        if not name or name in self._adapters:
            raise AdapterError(f"An adapter named {name!r} is already loaded: use a new (versioned) name.")

    def _require_loaded(self, name: str) -> None:
        """AdapterError unless an adapter is loaded under ``name``."""
        if name not in self._adapters:
            raise AdapterError(
                f"No adapter named {name!r} is loaded (loaded: {', '.join(self._adapters) or 'none'})."
            )

    def _resolve(self, adapter: AdapterChoice | str | None) -> AdapterChoice:
        """The adapters a request is answered with: ``adapter`` (a choice, one name, or None for the
        base model) with :data:`~adapters.serving.ACTIVE` fixed to the active one now; each loaded."""
        choice = AdapterChoice.of(adapter).resolve(self._active)
        for name in choice.names:
            self._require_loaded(name)
        return choice

    def generate(self, messages: list[dict[str, str]], **kwargs: Any) -> Generation:
        """Blocking ``submit``; safe to call from many threads at once."""
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
