"""A local OpenAI-compatible chat-completions server for tests: canned replies, recorded requests.

It speaks the real wire protocol (POST /v1/chat/completions, GET /v1/models) so the real
`openai` client inside verifiers talks to it unchanged.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.http import LocalServer


class FakeOpenAI(LocalServer):
    """Serves replies computed by `reply(messages) -> str`; records every request body."""

    def __init__(self, reply: Callable[[list[dict[str, Any]]], str]) -> None:
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(
                    200, {"object": "list", "data": [{"id": "fake-model", "object": "model", "owned_by": "test"}]}
                )

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    server.requests.append(body)
                content = server.reply(body.get("messages", []))
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{uuid.uuid4().hex[:10]}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", "fake-model"),
                        "choices": [
                            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
                        ],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
                    },
                )

        super().__init__(Handler)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def user_prompts(self) -> list[str]:
        """The last user message of every request, in arrival order."""
        out = []
        for body in self.requests:
            users = [m for m in body.get("messages", []) if m.get("role") == "user"]
            content = users[-1]["content"] if users else ""
            out.append(content if isinstance(content, str) else "".join(p.get("text", "") for p in content))
        return out
