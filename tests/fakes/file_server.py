"""A local HTTP file server with Range support and injectable faults (for download tests)."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.http import LocalServer


class FileServer(LocalServer):
    """Serves `data` at any path. `drop_after` cuts the first N responses after that many bytes."""

    def __init__(self, data: bytes, *, drop_after: int | None = None, drops: int = 1, html: bool = False) -> None:
        self.data, self.drop_after, self.drops, self.html = data, drop_after, drops, html
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                body = server.data[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Type", "text/html" if server.html else "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.data) - 1}/{len(server.data)}")
                self.end_headers()
                if server.drop_after is not None and server.drops > 0:
                    server.drops -= 1
                    self.wfile.write(body[: server.drop_after])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        super().__init__(Handler)
        self.url = f"http://127.0.0.1:{self.port}/test_data.h5"
