"""RemoteRuntime against a real OpenAI-compatible server on loopback, backed by the tiny GPTQ model.

The server speaks the subset of vLLM's API loopbot uses (streamed chat completions with the adapter in
the ``model`` field, runtime LoRA loading); behind it is a real :class:`ModelRuntime`, so answers and
adapter switching are the model's own, not canned.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from adapters.errors import AdapterError
from adapters.serving import RemoteRuntime

QUESTION = [{"role": "user", "content": "What is the capital of Japan?"}]


def _handler(runtime: Any, base_name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/v1/load_lora_adapter":
                try:
                    runtime.load_adapter(body["lora_name"], Path(body["lora_path"]))
                except AdapterError as error:
                    return self._json(400, {"error": str(error)})
                return self._json(200, {})
            if self.path != "/v1/chat/completions":
                return self._json(404, {"error": "unknown path"})
            model = body["model"]
            if model != base_name and model not in runtime.adapters:
                return self._json(404, {"error": f"model {model} does not exist"})
            system = [m["content"] for m in body["messages"] if m["role"] == "system"]
            result = runtime.generate(
                [m for m in body["messages"] if m["role"] != "system"],
                system_prompt=system[0] if system else None,
                max_new_tokens=body["max_tokens"],
                temperature=body["temperature"],
                stop=body.get("stop", ()),
                adapter=None if model == base_name else model,
            )
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            words = result.text.split(" ")
            for index, word in enumerate(words):
                piece = word if index == 0 else " " + word
                self.wfile.write(
                    f"data: {json.dumps({'choices': [{'delta': {'content': piece}}]})}\n\n".encode()
                )
            usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens}
            self.wfile.write(
                f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode()
            )

    return Handler


@pytest.fixture
def server(tiny_runtime: Any) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(tiny_runtime, "tiny-base"))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_remote_answers_match_the_served_model_and_adapters_switch(
    server: str, tiny_runtime: Any, tiny_model_dir: Path, make_lora_adapter: Any
) -> None:
    remote = RemoteRuntime(server, model="tiny-base", max_new_tokens=12)
    try:
        local = tiny_runtime.generate(QUESTION, max_new_tokens=12, adapter=None)
        pieces: list[str] = []
        base = remote.generate(QUESTION, on_token=pieces.append)
        assert base.text == local.text
        assert "".join(pieces).strip() == base.text
        assert base.adapter is None and base.completion_tokens == local.completion_tokens

        remote.load_adapter("v0001", make_lora_adapter(tiny_model_dir, seed=1))
        remote.set_active_adapter("v0001")
        tuned = remote.generate(QUESTION)
        assert tuned.adapter == "v0001"
        assert tuned.text == tiny_runtime.generate(QUESTION, max_new_tokens=12, adapter="v0001").text
        assert tuned.text != base.text
        assert remote.info()["active"] == "v0001"
    finally:
        remote.close()


def test_remote_agenerate_streams_on_the_loop_and_concurrent_requests_agree(
    server: str, tiny_model_dir: Path, make_lora_adapter: Any
) -> None:
    remote = RemoteRuntime(server, model="tiny-base", max_new_tokens=8)
    # The random tiny base mostly emits special tokens; a random adapter makes it say something.
    remote.load_adapter("v0002", make_lora_adapter(tiny_model_dir, seed=2))
    remote.set_active_adapter("v0002")

    async def ask_many() -> list[str]:
        loop_thread = threading.get_ident()
        seen: list[int] = []
        results = await asyncio.gather(
            *[
                remote.agenerate(QUESTION, on_token=lambda _p: seen.append(threading.get_ident()))
                for _ in range(4)
            ]
        )
        assert seen and set(seen) == {loop_thread}
        return [r.text for r in results]

    try:
        texts = asyncio.run(ask_many())
        assert len(set(texts)) == 1 and texts[0]
    finally:
        remote.close()


def test_remote_errors_say_what_to_do(server: str, tmp_path: Path) -> None:
    remote = RemoteRuntime(server, model="tiny-base")
    try:
        with pytest.raises(AdapterError, match="refused /v1/load_lora_adapter"):
            remote.load_adapter("v0009", tmp_path / "missing")
        with pytest.raises(AdapterError, match="No adapter named 'v0009'"):
            remote.set_active_adapter("v0009")
        assert remote.adapters == []
    finally:
        remote.close()

    unreachable = RemoteRuntime("http://127.0.0.1:9", model="tiny-base", timeout=2)
    try:
        with pytest.raises(AdapterError, match="LOOPBOT_MODEL_SERVER_URL"):
            unreachable.generate(QUESTION)
    finally:
        unreachable.close()
