"""An OpenAI-compatible chat-completions endpoint on 127.0.0.1 that answers with a policy.

It speaks the real wire protocol (`POST /v1/chat/completions`, plain or streamed as server-sent
events, and `GET /v1/models`), so verifiers' own OpenAI client talks to it unchanged: a reference
policy runs through exactly the path a real model does. Requests are kept for inspection.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY_VAR = "SCICODE_POLICY_KEY"
"""The environment variable clients name for this server's (unchecked) key."""


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of the last user message of a chat request."""
    users = [m for m in messages if m.get("role") == "user"]
    content = users[-1].get("content", "") if users else ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


class PolicyServer:
    """Serves `reply(messages) -> str` while in a `with` block; `url` ends in `/v1`."""

    def __init__(self, reply: Callable[[list[dict[str, Any]]], str], *, model: str = "policy") -> None:
        self.reply, self.model = reply, model
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @classmethod
    def for_policy(cls, policy: Any) -> PolicyServer:
        """A server answering with a reference policy (`policy.reply(prompt_text)`)."""
        return cls(lambda messages: policy.reply(last_user_text(messages)), model=policy.name)

    def __enter__(self) -> PolicyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def user_prompts(self) -> list[str]:
        """The last user message of every request, in arrival order."""
        return [last_user_text(body.get("messages", [])) for body in self.requests]

    def _completion(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        with self._lock:
            self.requests.append(body)
        content = self.reply(body.get("messages", []))
        ident = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        return content, {"id": ident, "created": int(time.time()), "model": body.get("model", self.model)}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._json(
                    200, {"object": "list", "data": [{"id": server.model, "object": "model", "owned_by": "scicode"}]}
                )

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                content, meta = server._completion(body)
                usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
                if not body.get("stream"):
                    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
                    self._json(200, {**meta, "object": "chat.completion", "choices": [choice], "usage": usage})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                chunks = [
                    {"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": None},
                    {"index": 0, "delta": {}, "finish_reason": "stop"},
                ]
                for choice in chunks:
                    event = {**meta, "object": "chat.completion.chunk", "choices": [choice]}
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                event = {**meta, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                self.wfile.write(f"data: {json.dumps(event)}\n\ndata: [DONE]\n\n".encode())

        return Handler
