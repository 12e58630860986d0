"""A runtime that generates on an OpenAI-compatible server (vLLM) instead of in this process.

Past one machine, the GPTQ base is served by vLLM with ``--enable-lora``: one server holds many
adapters and picks one per request by the request's ``model`` field. :class:`RemoteRuntime` has the
same public surface as :class:`adapters.serving.ModelRuntime` (``generate``/``submit``/``agenerate``,
``load_adapter``/``set_active_adapter``, ``info``), so the answer chain, the bot and the hot swap use
it unchanged. Adapters are loaded at run time through ``/v1/load_lora_adapter`` under versioned names
(vLLM reports stale prefix caches when a name is reloaded, see docs/PLATFORM_NOTES.md, "Serving many adapters").
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from adapters.errors import AdapterError
from adapters.prompt import with_system
from adapters.serving._base import RuntimeBase
from adapters.serving._choice import ACTIVE, AdapterChoice
from adapters.serving._requests import INTERACTIVE, Generation


class RemoteRuntime(RuntimeBase):
    """Generation through an OpenAI-compatible ``/v1/chat/completions`` endpoint, streaming."""

    def __init__(
        self,
        url: str,
        *,
        model: str,
        api_key: str = "",
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        system_prompt: str | None = None,
        timeout: float = 300.0,
        max_concurrency: int = 8,
        client: Any | None = None,
    ):
        import httpx

        self._url = url.rstrip("/")
        self._model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.Client(base_url=self._url, headers=headers, timeout=timeout)
        self.default_max_new_tokens = max_new_tokens
        self.default_temperature = temperature
        self.default_system_prompt = system_prompt
        self._adapters: dict[str, Path] = {}
        self._active: str | None = None
        self._lock = threading.Lock()
        # The server batches concurrent requests itself; the pool only bounds how many we keep open.
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_concurrency, thread_name_prefix="loopbot-remote"
        )

    @property
    def base_name(self) -> str:
        """The served base model's name on the server."""
        return self._model

    def info(self) -> dict[str, Any]:
        """What is served and where."""
        return {
            "base": self._model,
            "server": self._url,
            "quantization": "server-side",
            "device": "remote",
            "adapters": self.adapters,
            "active": self._active,
        }

    def count_tokens(self, text: str) -> int:
        """Approximate token count (4 characters a token): used only to budget context passages."""
        return max(1, len(text) // 4)

    def load_adapter(self, name: str, path: Path) -> None:
        """Ask the server to load the LoRA in ``path`` (a path the *server* can read) as ``name``."""
        self._require_new(name)
        self._post(
            "/v1/load_lora_adapter",
            {"lora_name": name, "lora_path": str(path)},
            hint="start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True",
        )
        self._adapters[name] = Path(path)

    def unload_adapter(self, name: str) -> None:
        """Ask the server to drop adapter ``name``."""
        self._require_loaded(name)
        with self._lock:
            if self._active == name:
                self._active = None
        self._post("/v1/unload_lora_adapter", {"lora_name": name}, hint="check the server log")
        self._adapters.pop(name)

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
        """Send a generation request; the future resolves to a :class:`Generation`.

        The adapter is fixed now, so a swap never changes a request already sent. Requests go out
        concurrently (up to the pool's size) and the server batches them. ``priority`` is accepted
        for the in-process runtime's sake and not sent: vLLM refuses it unless started with
        ``--scheduling-policy priority``.
        """
        if not messages:
            raise AdapterError("Nothing to answer: the message list is empty.")
        # vLLM applies one LoRA per request: of a stack (the guild's, then a member's), the top and
        # most specific one answers.
        name = self._resolve(adapter).top
        chat = with_system(messages, self.default_system_prompt if system_prompt is None else system_prompt)
        body = {
            "model": name or self._model,
            "messages": chat,
            "max_tokens": self.default_max_new_tokens if max_new_tokens is None else max_new_tokens,
            "temperature": self.default_temperature if temperature is None else temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if stop:
            body["stop"] = list(stop)
        return self._pool.submit(self._stream, body, name, on_token, cancel or threading.Event())

    def close(self) -> None:
        """Wait for requests in flight, then close the connection pool."""
        self._pool.shutdown(wait=True)
        self._client.close()

    # ----- HTTP ------------------------------------------------------------------------------
    def _post(self, path: str, body: dict[str, Any], *, hint: str) -> None:
        import httpx

        try:
            response = self._client.post(path, json=body)
        except httpx.HTTPError as error:
            raise AdapterError(
                f"Cannot reach the model server {self._url} ({error}): start it or fix "
                "LOOPBOT_MODEL_SERVER_URL."
            ) from None
        if response.status_code >= 400:
            raise AdapterError(
                f"The model server refused {path} ({response.status_code}: {response.text[:200]}): {hint}."
            )

    def _events(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The server-sent events of one streamed chat completion, parsed."""
        import httpx

        try:
            with self._client.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise AdapterError(
                        f"The model server answered {response.status_code} "
                        f"({response.text[:200]}): check that model {body['model']!r} is served."
                    )
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    yield json.loads(data)
        except httpx.HTTPError as error:
            raise AdapterError(
                f"Cannot reach the model server {self._url} ({error}): start it or fix "
                "LOOPBOT_MODEL_SERVER_URL."
            ) from None

    def _stream(
        self,
        body: dict[str, Any],
        adapter: str | None,
        on_token: Callable[[str], None] | None,
        cancel: threading.Event,
    ) -> Generation:
        started = time.perf_counter()
        first: float | None = None
        pieces: list[str] = []
        usage: dict[str, Any] = {}
        for event in self._events(body):
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece:
                    first = first if first is not None else time.perf_counter() - started
                    pieces.append(piece)
                    if on_token is not None:
                        on_token(piece)
            if cancel.is_set():  # closing the stream makes the server abort the request
                break
        text = "".join(pieces)
        return Generation(
            text=text.strip(),
            adapter=adapter,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", len(pieces))),
            seconds=time.perf_counter() - started,
            first_token_seconds=first,
        )
