"""A real ffd on a temp socket and spool, and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))

FAST = (
    "[delivery]\nbackoff_base_ms = 50\nbackoff_multiplier = 2\nbackoff_max_ms = 400\n"
    "breaker_threshold = 1000\ntimeout_ms = 5000\n"
)


def ffd_bin() -> str:
    """$FFD_BIN, else target/debug/ffd (in $CARGO_TARGET_DIR when set)."""
    env = os.environ.get("FFD_BIN")
    if env:
        return env
    target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    path = target / "debug" / "ffd"
    if not path.exists():
        raise RuntimeError(f"{path} not built: run `cargo build -p ffd` or set FFD_BIN")
    return str(path)


def wait_until(what: str, pred: Callable[[], object], timeout: float = 20.0) -> object:
    """Polls `pred` until it returns something true; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Daemon:
    """`ffd --config ... --socket DIR/ffd.sock --spool DIR/spool`, stopped on close."""

    def __init__(self, config: str = FAST) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="ffd-py-")
        self.dir = Path(self._tmp.name)
        self.socket = str(self.dir / "ffd.sock")
        (self.dir / "ffd.toml").write_text(config)
        self.proc: Optional[subprocess.Popen] = None
        self.logs: List[str] = []
        self.start()

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "FFD_SOCKET"}
        env["RUST_LOG"] = "ffd=info"
        self.proc = subprocess.Popen(
            [ffd_bin(), "--config", str(self.dir / "ffd.toml"), "--socket", self.socket,
             "--spool", str(self.dir / "spool")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        ready = threading.Event()
        proc = self.proc

        def read_logs() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                self.logs.append(line)
                if "ffd ready" in line:
                    ready.set()

        self._reader = threading.Thread(target=read_logs, daemon=True)
        self._reader.start()
        if not ready.wait(20):
            self.stop()
            raise RuntimeError("ffd did not become ready:\n" + "".join(self.logs))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stderr is not None:
            self._reader.join(5)
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def op(self, line: dict) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(self.socket)
            s.sendall(json.dumps(line).encode() + b"\n")
            return json.loads(s.makefile("rb").readline())

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()


class Recorded:
    def __init__(self, method: str, path: str, headers: List[Tuple[str, str]], body: bytes) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body

    def header(self, name: str) -> Optional[str]:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def headers_named(self, name: str) -> List[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class Sink:
    """An HTTP server on 127.0.0.1 that records every request; answers 200,
    or the status `status_for(path)` returns."""

    def __init__(self, status_for: Callable[[str], int] = lambda path: 200) -> None:
        self.requests: List[Recorded] = []
        self.cv = threading.Condition()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def handle_any(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n)
                rec = Recorded(self.command, self.path, list(self.headers.items()), body)
                status = status_for(self.path)
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                with sink.cv:
                    sink.requests.append(rec)
                    sink.cv.notify_all()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return self.base + path

    def wait_for(self, n: int, pred: Callable[[Recorded], bool] = lambda r: True,
                 timeout: float = 20.0) -> List[Recorded]:
        """Waits until `n` recorded requests satisfy `pred`; returns them."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                found = [r for r in self.requests if pred(r)]
                if len(found) >= n:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"sink got {len(found)} of {n} requests")
                self.cv.wait(left)

    def by_path(self, path: str) -> Dict[str, Recorded]:
        return {r.header("ffd-id") or "": r for r in self.requests if r.path == path}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
