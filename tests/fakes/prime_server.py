"""Local fake of Prime Intellect's sandbox HTTP API, for offline tests of code that
uses the real ``prime-sandboxes`` 0.5.x SDK (sync ``SandboxClient`` and async
``AsyncSandboxClient``).

Usage::

    with FakePrime(ready_delay=0.5) as fake:
        monkeypatch.setenv("PRIME_API_BASE_URL", fake.base_url)
        monkeypatch.setenv("PRIME_API_KEY", "test")
        monkeypatch.setenv("HOME", str(tmp_path))   # SDK writes ~/.prime/sandbox_auth_cache.json
        ...drive the real SDK...
        assert fake.sandboxes == {}

Stdlib only, plus the SDK's own generated protobuf module for the command-session
messages. One threaded HTTP/1.1 server serves both the control plane (``/api/v1``)
and the per-sandbox gateway (``/gw/<user_ns>/<sandbox_id>/...``); the gateway URL
handed out by ``POST /sandbox/{id}/auth`` (and pre-seeded as ``gatewayAuth`` in the
create response) points back at this server.

Filesystem mapping: every sandbox gets a host temp dir ``root``. A sandbox path
``/a/b`` maps to ``<root>/a/b`` (``..`` cannot climb above root; relative paths are
taken relative to ``/``; a path that already lies inside ``root`` is used as is).
This applies to file upload/download/read-file and to ``working_dir``. Commands run
on the host as ``/bin/bash -c <command>`` with cwd = mapped working_dir (default:
root) and env = {PATH, LANG, HOME=<root>/root, TMPDIR=<root>/tmp,
SANDBOX_ROOT=<root>} + the sandbox's environment_vars + the call's env. Absolute
paths *inside the command string* are NOT rewritten - use relative paths or
``$SANDBOX_ROOT``. There is no isolation: this is a test double, not a sandbox.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import queue
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from prime_sandboxes._proto.command_session import command_session_pb2 as pb

API = "/api/v1"
GATEWAY = "/gw"
USER_NS = "fake-ns"
START_RPC = "command_session.CommandSession/Start"
DEAD_STATUSES = ("ERROR", "TERMINATED", "TIMEOUT")
# HTTP status -> Connect error code, for faults injected on the command stream.
CONNECT_CODES = {
    400: "invalid_argument",
    401: "unauthenticated",
    404: "not_found",
    409: "aborted",
    429: "resource_exhausted",
    500: "internal",
    502: "unavailable",
    503: "unavailable",
    504: "deadline_exceeded",
}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class _Sandbox:
    """Server-side state of one sandbox."""

    def __init__(self, payload: dict, ready_delay: float, root: str):
        self.id = "sbx" + uuid.uuid4().hex[:22]
        self.payload = payload
        self.root = root
        self.token = uuid.uuid4().hex
        self.created = time.time()
        self.ready_at = self.created + ready_delay
        self.forced_status: str | None = None  # set by kill_sandbox()
        self.error_type: str | None = None
        self.error_message: str | None = None
        self.procs: set[subprocess.Popen] = set()  # running commands

    @property
    def status(self) -> str:
        if self.forced_status:
            return self.forced_status
        return "RUNNING" if time.time() >= self.ready_at else "PENDING"

    def to_json(self) -> dict:
        p, running = self.payload, self.status == "RUNNING"
        return {
            "id": self.id,
            "name": p["name"],
            "dockerImage": p.get("docker_image") or "",
            "startCommand": p.get("start_command"),
            "cpuCores": p.get("cpu_cores", 1.0),
            "memoryGB": p.get("memory_gb", 1.0),
            "diskSizeGB": p.get("disk_size_gb", 5.0),
            "diskMountPath": "/",
            "gpuCount": p.get("gpu_count", 0),
            "gpuType": p.get("gpu_type"),
            "vm": bool(p.get("vm", True)),
            "networkAllowlist": p.get("network_allowlist"),
            "networkDenylist": p.get("network_denylist"),
            "status": self.status,
            "timeoutMinutes": p.get("timeout_minutes", 60),
            "idleTimeoutMinutes": p.get("idle_timeout_minutes"),
            "environmentVars": p.get("environment_vars"),
            "secrets": {k: "***" for k in p["secrets"]} if p.get("secrets") else None,
            "labels": list(p.get("labels") or []),
            "createdAt": _iso(self.created),
            "updatedAt": _iso(time.time()),
            "startedAt": _iso(self.ready_at) if running else None,
            "errorType": self.error_type,
            "errorMessage": self.error_message,
            "teamId": p.get("team_id"),
            "region": p.get("region"),
        }

    def auth(self, gateway_url: str) -> dict:
        return {
            "gateway_url": gateway_url,
            "user_ns": USER_NS,
            "job_id": self.id,
            "token": self.token,
            "expires_at": _iso(time.time() + 3600),
        }

    def host_path(self, path: str) -> str:
        """Map a sandbox path to the host (see module docstring)."""
        if path == self.root or path.startswith(self.root + os.sep):
            return path
        return os.path.join(self.root, posixpath.normpath("/" + path).lstrip("/"))

    def kill_procs(self) -> None:
        for proc in list(self.procs):
            _killpg(proc)


def _killpg(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the command runs in its own session


class FakePrime:
    """Threaded fake Prime sandbox API on 127.0.0.1. See the module docstring.

    Args:
        ready_delay: seconds from create until a sandbox reports RUNNING (PENDING
            before). Also settable at runtime via ``fake.ready_delay = x``.
        seed_gateway_auth: include ``gatewayAuth`` in the create response (as the
            platform does); if False the SDK must call ``POST /sandbox/{id}/auth``.
        read_file_max_bytes: read-file answers 413 above this size.
    """

    def __init__(
        self, ready_delay: float = 0.0, seed_gateway_auth: bool = True, read_file_max_bytes: int = 10 * 1024 * 1024
    ):
        self.ready_delay = ready_delay
        self.seed_gateway_auth = seed_gateway_auth
        self.read_file_max_bytes = read_file_max_bytes
        self.calls: list[tuple[str, str]] = []  # (method, path) of every request
        self._lock = threading.RLock()
        self._boxes: dict[str, _Sandbox] = {}
        self._by_idem_key: dict[str, str] = {}
        self._rules: list[dict] = []  # pending fault injections, in insertion order
        self._hangs = 0
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self.base_url = ""

    # ---- lifecycle ----------------------------------------------------------
    def start(self) -> FakePrime:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True, kwargs={"poll_interval": 0.05}).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            for sb in self._boxes.values():
                sb.kill_procs()
                shutil.rmtree(sb.root, ignore_errors=True)
            self._boxes.clear()
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakePrime:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- inspection ---------------------------------------------------------
    @property
    def sandboxes(self) -> dict[str, dict]:
        """Snapshot of live (not deleted/removed) sandboxes, keyed by id."""
        with self._lock:
            return {
                sid: {
                    "id": sid,
                    "name": sb.payload["name"],
                    "labels": list(sb.payload.get("labels") or []),
                    "status": sb.status,
                    "docker_image": sb.payload.get("docker_image"),
                    "network_allowlist": sb.payload.get("network_allowlist"),
                    "network_denylist": sb.payload.get("network_denylist"),
                    "environment_vars": sb.payload.get("environment_vars"),
                    "root": sb.root,
                }
                for sid, sb in self._boxes.items()
            }

    def count_calls(self, pattern: str) -> int:
        """Number of recorded calls whose "METHOD /path" matches regex ``pattern``."""
        return sum(1 for m, p in list(self.calls) if re.search(pattern, f"{m} {p}"))

    def clear_calls(self) -> None:
        self.calls.clear()

    # ---- fault injection ----------------------------------------------------
    def fail_next(self, pattern: str, status: int = 500, count: int = 1) -> None:
        """Answer the next ``count`` requests whose "METHOD /path" matches the regex
        ``pattern`` (re.search) with HTTP ``status`` and no side effects."""
        with self._lock:
            self._rules.append({"re": re.compile(pattern), "left": count, "kind": "fail", "status": status})

    def drop_next(self, pattern: str, count: int = 1, after_processing: bool = False) -> None:
        """Close the connection without any response for the next ``count`` matching
        requests. With ``after_processing`` the request's side effects happen first
        (e.g. the sandbox is created, then the response is lost); not for the
        command stream, which is always dropped before running."""
        with self._lock:
            self._rules.append({"re": re.compile(pattern), "left": count, "kind": "drop", "after": after_processing})

    def hang_next_command(self, count: int = 1) -> None:
        """The next ``count`` command streams (any sandbox, including the SDK's own
        readiness probe in wait_for_creation) send a start event and then nothing
        until the client's deadline, when they end with deadline_exceeded."""
        with self._lock:
            self._hangs += count

    def kill_sandbox(
        self,
        sandbox_id: str,
        status: str = "TERMINATED",
        error_type: str | None = None,
        error_message: str | None = None,
        remove: bool = False,
    ) -> None:
        """Kill a sandbox behind the client's back: its running commands are killed;
        it then reports ``status`` (e.g. TERMINATED, or ERROR with error_type
        "OOM_KILLED"), or with ``remove=True`` disappears entirely (404s)."""
        with self._lock:
            sb = self._boxes[sandbox_id]
            sb.forced_status, sb.error_type = status, error_type
            sb.error_message = error_message or f"sandbox {status.lower()} by test"
            if remove:
                self._drop_box(sandbox_id)
        sb.kill_procs()

    # ---- internals used by the handler --------------------------------------
    def _take_rule(self, method: str, path: str) -> dict | None:
        with self._lock:
            for rule in self._rules:
                if rule["left"] > 0 and rule["re"].search(f"{method} {path}"):
                    rule["left"] -= 1
                    return rule
        return None

    def _drop_box(self, sandbox_id: str) -> _Sandbox | None:
        with self._lock:
            sb = self._boxes.pop(sandbox_id, None)
        if sb:
            sb.kill_procs()
            shutil.rmtree(sb.root, ignore_errors=True)
        return sb

    def _create(self, payload: dict) -> tuple[int, dict]:
        if not payload.get("name") or not (payload.get("docker_image") or payload.get("checkpoint_id")):
            return 422, {"detail": "name and docker_image are required"}
        key = payload.get("idempotency_key")
        with self._lock:
            if key and key in self._by_idem_key:  # retried create: same sandbox back
                sb = self._boxes.get(self._by_idem_key[key])
                if sb:
                    return 200, self._create_body(sb)
            root = tempfile.mkdtemp(prefix="primefake-")
            for d in ("tmp", "root", "workspace", "home"):
                os.makedirs(os.path.join(root, d), exist_ok=True)
            sb = _Sandbox(payload, self.ready_delay, root)
            self._boxes[sb.id] = sb
            if key:
                self._by_idem_key[key] = sb.id
            return 200, self._create_body(sb)

    def _create_body(self, sb: _Sandbox) -> dict:
        body = sb.to_json()
        if self.seed_gateway_auth:
            body["gatewayAuth"] = sb.auth(self.base_url + GATEWAY)
        return body

    def _list(self, q: dict) -> tuple[int, dict]:
        want = set(q.get("labels", []))
        with self._lock:
            boxes = [
                sb
                for sb in self._boxes.values()
                if want <= set(sb.payload.get("labels") or [])
                and ("status" not in q or sb.status == q["status"][0])
                and not (q.get("is_active", [""])[0].lower() == "true" and sb.status in DEAD_STATUSES)
            ]
        page, per = int(q.get("page", ["1"])[0]), int(q.get("per_page", ["50"])[0])
        chunk = boxes[(page - 1) * per : page * per]
        return 200, {
            "sandboxes": [sb.to_json() for sb in chunk],
            "total": len(boxes),
            "page": page,
            "perPage": per,
            "hasNext": page * per < len(boxes),
        }

    def _bulk_delete(self, payload: dict) -> tuple[int, dict]:
        ids, labels = payload.get("sandbox_ids"), payload.get("labels")
        if not ids and not labels:
            return 422, {"detail": "sandbox_ids or labels required"}
        with self._lock:
            targets = ids or [
                sid for sid, sb in self._boxes.items() if set(labels) <= set(sb.payload.get("labels") or [])
            ]
            ok, failed = [], []
            for sid in targets:
                (ok if self._drop_box(sid) else failed).append(sid)
        failed_items = [{"sandbox_id": s, "error": "Sandbox not found"} for s in failed]
        return 200, {"succeeded": ok, "failed": failed_items, "message": f"Deleted {len(ok)} sandbox(es)"}

    def _batch_status(self, payload: dict) -> tuple[int, dict]:
        statuses, errors = [], []
        with self._lock:
            for sid in payload.get("sandbox_ids") or []:
                sb = self._boxes.get(sid)
                if sb is None:
                    errors.append({"sandbox_id": sid, "code": "NOT_FOUND", "message": "Sandbox not found"})
                else:
                    statuses.append(
                        {
                            "sandbox_id": sid,
                            "status": sb.status,
                            "error_type": sb.error_type,
                            "error_message": sb.error_message,
                        }
                    )
        return 200, {"statuses": statuses, "errors": errors}

    def _control(self, method: str, path: str, q: dict, body: bytes) -> tuple[int, dict]:
        """Route one control-plane request (path without the /api/v1 prefix)."""
        payload = json.loads(body) if body else {}
        if path == "/sandbox":
            if method == "POST":
                return self._create(payload)
            if method == "GET":
                return self._list(q)
            if method == "DELETE":
                return self._bulk_delete(payload)
        if path == "/sandbox/status:batchGet" and method == "POST":
            return self._batch_status(payload)
        m = re.fullmatch(r"/sandbox/([^/:]+)(/auth|/error-context|/logs)?", path)
        if not m:
            return 404, {"detail": "Not Found"}
        sid, sub = m.group(1), m.group(2) or ""
        with self._lock:
            sb = self._boxes.get(sid)
        if sb is None:
            return 404, {"detail": f"Sandbox {sid} not found"}
        if (method, sub) == ("GET", ""):
            return 200, sb.to_json()
        if (method, sub) == ("DELETE", ""):
            self._drop_box(sid)
            return 200, {"success": True, "sandboxId": sid}
        if (method, sub) == ("POST", "/auth"):
            return 200, sb.auth(self.base_url + GATEWAY)
        if (method, sub) == ("GET", "/error-context"):
            return 200, {"status": sb.status, "errorType": sb.error_type, "errorMessage": sb.error_message}
        if (method, sub) == ("GET", "/logs"):
            return 200, {"logs": ""}
        return 405, {"detail": "Method Not Allowed"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response has a length or is chunked
    timeout = 60  # idle keep-alive connections give up after this

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    @property
    def fake(self) -> FakePrime:
        return self.server.fake  # type: ignore[attr-defined]

    # -- low-level I/O --
    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()  # Connect streams arrive with chunked encoding
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # skip trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes | dict | list, ctype: str = "application/json"):
        if self._discard:  # drop_next(after_processing=True): lose the response
            self.close_connection = True
            return
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _client_gone(self) -> bool:
        """True if the client closed the connection (we never expect more bytes
        while a stream is open, so readability means EOF/reset)."""
        try:
            if select.select([self.connection], [], [], 0)[0]:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True
        return False

    # -- dispatch --
    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        path, q, method = url.path, parse_qs(url.query), self.command
        self.fake.calls.append((method, path))
        body = self._read_body()
        rule = self.fake._take_rule(method, path)
        self._discard = bool(rule and rule["kind"] == "drop")
        if self._discard and not (rule["after"] and START_RPC not in path):
            self.close_connection = True  # drop before any side effect
            return
        if rule and rule["kind"] == "fail":
            st = rule["status"]
            if START_RPC in path:
                return self._send(st, {"code": CONNECT_CODES.get(st, "unknown"), "message": f"injected HTTP {st}"})
            return self._send(st, {"detail": f"injected HTTP {st}"})
        if path.startswith(API + "/"):
            if not self.headers.get("Authorization", "").startswith("Bearer "):
                status, resp = 401, {"detail": "Unauthorized"}
            else:
                status, resp = self.fake._control(method, path[len(API) :], q, body)
            return self._send(status, resp)
        if path.startswith(GATEWAY + "/"):
            return self._gateway(method, path, q, body)
        self._send(404, {"detail": "Not Found"})

    _discard = False
    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    # -- gateway: files and the Connect command stream --
    def _gateway(self, method: str, path: str, q: dict, body: bytes) -> None:
        m = re.fullmatch(GATEWAY + r"/[^/]+/([^/]+)/(.+)", path)
        op = m.group(2) if m else ""
        with self.fake._lock:
            sb = self.fake._boxes.get(m.group(1)) if m else None
        is_rpc = op == START_RPC
        if sb is None or sb.status in DEAD_STATUSES:
            if is_rpc:
                return self._send(404, {"code": "not_found", "message": "sandbox not found"})
            return self._send(410, {"error": "sandbox_terminated"})
        if self.headers.get("Authorization") != f"Bearer {sb.token}":
            if is_rpc:
                return self._send(401, {"code": "unauthenticated", "message": "bad token"})
            return self._send(401, {"error": "unauthorized"})
        if sb.status != "RUNNING":  # PENDING: gateway not routable yet
            if is_rpc:
                return self._send(503, {"code": "unavailable", "message": "not running"})
            return self._send(409, {"error": "sandbox_not_running"})
        if is_rpc and method == "POST":
            return self._run_command(sb, body)
        rel = q.get("path", [""])[0]
        target = sb.host_path(rel)
        if op == "upload" and method == "POST":
            data = _multipart_file(body, self.headers.get("Content-Type", ""))
            if data is None:
                return self._send(400, {"error": "missing file field"})
            os.makedirs(os.path.dirname(target), exist_ok=True)  # lenient: creates parents
            with open(target, "wb") as f:
                f.write(data)
            return self._send(200, {"success": True, "path": rel, "size": len(data), "timestamp": _iso(time.time())})
        if op in ("download", "read-file") and method == "GET":
            if not os.path.isfile(target):
                return self._send(404, {"error": "file_not_found"})
            with open(target, "rb") as f:
                data = f.read()
            if op == "download":
                return self._send(200, data, "application/octet-stream")
            if len(data) > self.fake.read_file_max_bytes:
                return self._send(413, {"error": "file_too_large"})
            return self._send(200, {"content": data.decode("utf-8", "replace"), "size": len(data)})
        self._send(404, {"error": "unknown gateway route"})

    def _event(self, **kw) -> None:
        msg = pb.StartResponse(event=pb.CommandSessionEvent(**kw)).SerializeToString()
        self._chunk(struct.pack(">BI", 0, len(msg)) + msg)

    def _end_stream(self, error_code: str | None = None, message: str = "") -> None:
        end = {"error": {"code": error_code, "message": message}} if error_code else {}
        data = json.dumps(end).encode()
        self._chunk(struct.pack(">BI", 2, len(data)) + data)
        self._chunk(b"")  # zero-length chunk ends the HTTP body

    def _run_command(self, sb: _Sandbox, body: bytes) -> None:
        """Connect server-stream for CommandSession/Start: run /bin/bash -c locally and
        stream start / stdout / stderr / end events, then the end-of-stream frame."""
        req = pb.StartRequest()
        req.ParseFromString(body[5 : 5 + struct.unpack(">I", body[1:5])[0]])
        spec = req.command
        tmo = self.headers.get("connect-timeout-ms")
        deadline = time.monotonic() + int(tmo) / 1000 if tmo else None
        with self.fake._lock:
            hang = self.fake._hangs > 0
            self.fake._hangs -= hang
        self.send_response(200)
        self.send_header("Content-Type", "application/connect+proto")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        cwd = sb.host_path(spec.cwd) if spec.HasField("cwd") else sb.root
        proc, q, open_pipes = None, queue.Queue(), 0
        try:
            if hang:
                self._event(start=pb.CommandSessionEvent.StartEvent(pid=0))
            elif not os.path.isdir(cwd):
                self._event(
                    data=pb.CommandSessionEvent.DataEvent(
                        stderr=f"fake-prime: working_dir {spec.cwd} does not exist\n".encode()
                    )
                )
                self._event(end=pb.CommandSessionEvent.EndEvent(exit_code=1, exited=True))
                return self._end_stream()
            else:
                env = {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "LANG": "C.UTF-8",
                    "HOME": os.path.join(sb.root, "root"),
                    "SANDBOX_ROOT": sb.root,
                    "TMPDIR": os.path.join(sb.root, "tmp"),
                }
                env.update(sb.payload.get("environment_vars") or {})
                env.update(dict(spec.envs))
                proc = subprocess.Popen(
                    [spec.cmd, *spec.args],
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
                sb.procs.add(proc)
                for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
                    threading.Thread(target=_pump, args=(pipe, name, q), daemon=True).start()
                open_pipes = 2
                self._event(start=pb.CommandSessionEvent.StartEvent(pid=proc.pid))
            exited_at = None
            while True:
                if deadline is not None and time.monotonic() >= deadline:
                    return self._end_stream("deadline_exceeded", "command timed out")
                if sb.status != "RUNNING" or sb.id not in self.fake._boxes:
                    return self._end_stream("not_found", "sandbox terminated")
                if self.fake._stopping.is_set():
                    return self._end_stream("unavailable", "server shutting down")
                if self._client_gone():
                    self.close_connection = True
                    return
                try:
                    name, data = q.get(timeout=0.05)
                except queue.Empty:
                    if proc is None or proc.poll() is None:
                        continue
                    exited_at = exited_at or time.monotonic()
                    # Process exited: finish once pipes hit EOF, or after a grace
                    # period if a background grandchild keeps them open.
                    if open_pipes and time.monotonic() - exited_at < 0.2:
                        continue
                    rc = proc.returncode
                    self._event(
                        end=pb.CommandSessionEvent.EndEvent(
                            exit_code=rc if rc >= 0 else 128 - rc, exited=True, status=f"exit status {rc}"
                        )
                    )
                    return self._end_stream()
                if data is None:
                    open_pipes -= 1
                else:
                    self._event(data=pb.CommandSessionEvent.DataEvent(**{name: data}))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            # Timeout, kill, disconnect or shutdown: kill the whole process group.
            # After a normal exit, leftovers (e.g. SDK background jobs launched with
            # nohup ... &) keep running until the sandbox is deleted.
            if proc is not None and proc.poll() is None:
                _killpg(proc)
                proc.wait()


def _pump(pipe, name: str, q: queue.Queue) -> None:
    """Copy one output pipe of a command into the event queue; None marks EOF."""
    with pipe:
        while chunk := os.read(pipe.fileno(), 65536):
            q.put((name, chunk))
    q.put((name, None))


def _multipart_file(body: bytes, content_type: str) -> bytes | None:
    """Return the bytes of the form field named "file" from a multipart body."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        return None
    for part in body.split(b"--" + m.group(1).encode())[1:]:
        if part.startswith(b"--"):
            break
        headers, _, data = part[2:].partition(b"\r\n\r\n")
        if re.search(rb'name="file"', headers):
            return data[:-2] if data.endswith(b"\r\n") else data
    return None
