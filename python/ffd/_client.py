"""The synchronous client: socket discovery, errors, Client, Pipeline, send."""

from __future__ import annotations

import errno
import json as _json
import os
import select
import socket as _socket
import threading
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

__all__ = [
    "Client",
    "FfdError",
    "Pipeline",
    "PipelineRejected",
    "Rejected",
    "Rejection",
    "Unreachable",
    "default_socket",
    "send",
]

SYSTEM_SOCKET = "/run/ffd/ffd.sock"

Headers = Union[Mapping[str, str], Sequence[Tuple[str, str]], Sequence[Sequence[str]]]
Body = Union[str, bytes, bytearray, memoryview]

# One encoder for every line: json.dumps with arguments builds a new encoder
# on each call, which costs more than the encoding of a small request.
_ENCODER = _json.JSONEncoder(separators=(",", ":"))
# The encoder's own string escaper (C when available); ASCII output, as the
# encoder's default.
_ESCAPE = _json.encoder.encode_basestring_ascii


def default_socket() -> Tuple[str, str]:
    """The socket path and how it was chosen, by ffclient's and ffd's rule.

    `$FFD_SOCKET`; else, as root, the system socket; else your user's
    socket when it exists (`$XDG_RUNTIME_DIR/ffd.sock`, or
    `/tmp/ffd-UID/ffd.sock` when `$XDG_RUNTIME_DIR` is unset, where ffd
    listens then); else the system socket when it exists (the system
    service, for group `ffd`); else your user's socket.
    """
    env = os.environ.get("FFD_SOCKET")
    if env:
        return env, "from $FFD_SOCKET"
    if os.geteuid() == 0:
        return SYSTEM_SOCKET, "the system socket, as root ($FFD_SOCKET is not set)"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        user, where = os.path.join(runtime, "ffd.sock"), "in $XDG_RUNTIME_DIR"
    else:
        # As ffd does: Rust's temp dir is $TMPDIR, else /tmp.
        tmp = os.environ.get("TMPDIR") or "/tmp"
        user = os.path.join(tmp, f"ffd-{os.geteuid()}", "ffd.sock")
        where = "in the temp dir ($XDG_RUNTIME_DIR is not set)"
    if os.path.exists(user):
        return user, f"your user's socket {where}"
    if os.path.exists(SYSTEM_SOCKET):
        return SYSTEM_SOCKET, f"the system socket: there is no user socket {where}"
    return user, f"your user's socket {where} (no system socket either)"


class FfdError(Exception):
    """Base of the errors this module raises (also: the connection broke)."""


class Rejected(FfdError):
    """ffd refused a request: nothing was queued. `code` is stable, e.g. `bad_request`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"ffd rejected the request ({code}): {message}")
        self.code = code
        self.message = message


def _group_is_ffd(path: str) -> bool:
    """Whether the socket's group (or, unseen, its directory's) is `ffd`."""
    import grp

    for p in (path, os.path.dirname(path) or "/"):
        try:
            return grp.getgrgid(os.stat(p).st_gid).gr_name == "ffd"
        except (OSError, KeyError):
            continue
    return False


class Unreachable(FfdError):
    """No ffd answers on the socket: not running, wrong path or no permission."""

    def __init__(self, path: str, how: str, error: OSError) -> None:
        self.path = path
        self.how = how
        self.error = error
        if error.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
            hint = (
                "ffd seems not to be running (nothing listens there): start it with `ffd`, "
                "or set $FFD_SOCKET to the socket it listens on"
            )
        elif error.errno in (errno.EACCES, errno.EPERM) and _group_is_ffd(path):
            hint = (
                "ffd may be running, but this user may not use its socket "
                "(the system socket is for group ffd: join it)"
            )
        elif error.errno in (errno.EACCES, errno.EPERM):
            # Joining group ffd helps only with the system service's socket.
            hint = (
                "ffd may be running, but this user may not use its socket: it belongs to "
                "another user (an ffd run as root in the foreground serves root only); "
                "run your own ffd, or use the system service (group ffd)"
            )
        else:
            hint = "ffd may not be running"
        reason = error.strerror or str(error)
        super().__init__(f"cannot reach ffd at {path} ({how}): {reason}; {hint}")


class Rejection(NamedTuple):
    """One refused line of a pipeline: its position among the pipeline's sends."""

    index: int
    code: str
    message: str


class PipelineRejected(FfdError):
    """Raised when a pipeline ends with refused requests; lists every one."""

    def __init__(self, rejected: List[Rejection], ids: List[str]) -> None:
        lines = "; ".join(f"#{r.index} {r.code}: {r.message}" for r in rejected[:10])
        more = f" (and {len(rejected) - 10} more)" if len(rejected) > 10 else ""
        super().__init__(
            f"ffd rejected {len(rejected)} of {len(rejected) + len(ids)} requests: {lines}{more}"
        )
        self.rejected = rejected
        self.ids = ids


def _request(
    url: Optional[str],
    method: Optional[str],
    headers: Optional[Headers],
    json: Any,
    body: Optional[Body],
    id: Optional[str],
    dest: Optional[str],
    path: Optional[str],
    timeout_ms: Optional[int],
    max_attempts: Optional[int],
    ttl_ms: Optional[int],
    delay_ms: Optional[int],
) -> bytes:
    """One protocol line (with its newline); fields given as None are left out.

    Written field by field rather than through a dict and the encoder: a
    pipelined send costs about what this function costs, and the dict and
    the encoder's walk over it were most of that. Strings go through the C
    string escaper (the same one the encoder uses, ASCII output)."""
    parts = []
    if url is not None:
        parts.append('"url":' + _str(url))
    if dest is not None:
        parts.append('"dest":' + _str(dest))
    if path is not None:
        parts.append('"path":' + _str(path))
    if method is not None:
        parts.append('"method":' + _str(method))
    if headers is not None:
        parts.append('"headers":' + _headers(headers))
    if json is not None:
        parts.append('"json":' + _ENCODER.encode(json))
    if body is not None:
        if isinstance(body, str):
            parts.append('"body":' + _str(body))
        else:
            raw = bytes(body)
            try:
                parts.append('"body":' + _str(raw.decode("utf-8")))
            except UnicodeDecodeError:
                import base64

                parts.append('"body_base64":"' + base64.b64encode(raw).decode("ascii") + '"')
    if id is not None:
        parts.append('"id":' + _str(id))
    if timeout_ms is not None:
        parts.append('"timeout_ms":' + _ENCODER.encode(timeout_ms))
    if max_attempts is not None:
        parts.append('"max_attempts":' + _ENCODER.encode(max_attempts))
    if ttl_ms is not None:
        parts.append('"ttl_ms":' + _ENCODER.encode(ttl_ms))
    if delay_ms is not None:
        parts.append('"delay_ms":' + _ENCODER.encode(delay_ms))
    return ("{" + ",".join(parts) + "}\n").encode("ascii")


def _str(v: Any) -> str:
    """A JSON string; anything else through the encoder (which says what
    it cannot encode)."""
    if type(v) is str:
        return _ESCAPE(v)
    return _ENCODER.encode(v)


def _headers(headers: Headers) -> str:
    if type(headers) is dict:
        items = headers.items()
    elif isinstance(headers, Mapping):
        items = dict(headers).items()
    else:
        return _ENCODER.encode([list(h) for h in headers])
    return "{" + ",".join(_str(k) + ":" + _str(v) for k, v in items) + "}"


_OK_ID = b'{"ok":true,"id":"'


def _answer(raw: bytes) -> Dict[str, Any]:
    try:
        answer = _json.loads(raw)
    except ValueError as e:
        raise FfdError(f"unexpected answer from ffd: {raw[:200]!r}") from e
    if not isinstance(answer, dict) or "ok" not in answer:
        raise FfdError(f"unexpected answer from ffd: {raw[:200]!r}")
    return answer


def _ok(answer: Dict[str, Any]) -> Dict[str, Any]:
    if answer["ok"]:
        return answer
    raise Rejected(str(answer.get("error", "")), str(answer.get("message", "")))


class _Broken(Exception):
    """The connection broke before ffd answered (internal: triggers one reconnect)."""


class Client:
    """One connection to ffd. Safe to share between threads (calls take turns).

    `socket`: the socket path; default: `default_socket()`.
    """

    def __init__(self, socket: Union[str, "os.PathLike[str]", None] = None) -> None:
        if socket is None:
            self.path, self._how = default_socket()
        else:
            self.path, self._how = os.fspath(socket), "given to ffd.Client"
        self._lock = threading.RLock()
        self._pipeline: Optional[Pipeline] = None
        self._sock: Optional[_socket.socket] = None
        self._rfile: Any = None
        self._pid = os.getpid()
        self._connect()

    def _connect(self) -> None:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            s.connect(self.path)
        except OSError as e:
            s.close()
            raise Unreachable(self.path, self._how, e) from None
        self._sock = s
        self._rfile = s.makefile("rb")
        self._pid = os.getpid()

    def _drop(self) -> None:
        if self._rfile is not None:
            self._rfile.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._rfile = None

    def close(self) -> None:
        """Closes the connection. Sends made before were acknowledged already."""
        with self._lock:
            self._drop()

    def __del__(self) -> None:
        # A thread's client goes with its thread: close quietly.
        try:
            self._drop()
        except Exception:
            pass

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _exchange(self, line: bytes) -> bytes:
        sock = self._sock
        if sock is None:
            raise _Broken("not connected")
        try:
            sock.sendall(line)
            raw = self._rfile.readline()
        except (BrokenPipeError, ConnectionResetError) as e:
            raise _Broken(str(e)) from e
        if not raw:
            raise _Broken("ffd closed the connection")
        return raw

    def _call(self, line: bytes) -> Dict[str, Any]:
        """One line, one answer. A connection that broke before ffd answered
        is opened again once: ffd answers every line it has read (even while
        stopping), so a line without an answer was not taken."""
        with self._lock:
            if self._pipeline is not None:
                raise FfdError("a pipeline is open on this client: send through the pipeline")
            if self._pid != os.getpid():
                # A child after fork: the parent's connection is not ours.
                self._drop()
            if self._sock is None:
                self._connect()
            try:
                return _answer(self._exchange(line))
            except _Broken:
                self._drop()
                self._connect()
                try:
                    return _answer(self._exchange(line))
                except _Broken as e:
                    self._drop()
                    raise FfdError(f"the connection to ffd at {self.path} broke: {e}") from None

    def send(
        self,
        url: Optional[str] = None,
        *,
        method: Optional[str] = None,
        headers: Optional[Headers] = None,
        json: Any = None,
        body: Optional[Body] = None,
        id: Optional[str] = None,
        dest: Optional[str] = None,
        path: Optional[str] = None,
        timeout_ms: Optional[int] = None,
        max_attempts: Optional[int] = None,
        ttl_ms: Optional[int] = None,
        delay_ms: Optional[int] = None,
    ) -> str:
        """Hands one request to ffd; returns its id once ffd holds it.

        Raises `Rejected` (nothing was queued) or `Unreachable`."""
        line = _request(
            url, method, headers, json, body, id, dest, path, timeout_ms, max_attempts, ttl_ms, delay_ms
        )
        return str(_ok(self._call(line))["id"])

    def status(self, id: str) -> Dict[str, Any]:
        """State of one request: `state`, `attempts`, `last_status`, `last_error`, ..."""
        answer = _ok(self._call(_ENCODER.encode({"op": "status", "id": id}).encode() + b"\n"))
        return dict(answer["status"])

    def stats(self) -> Dict[str, Any]:
        """Counters, queue depth and per-host state."""
        return dict(_ok(self._call(b'{"op":"stats"}\n'))["stats"])

    def ping(self) -> Dict[str, Any]:
        """Version, protocol and pid of the daemon."""
        return dict(_ok(self._call(b'{"op":"ping"}\n'))["pong"])

    def pipeline(self) -> "Pipeline":
        """A context manager that writes requests without waiting for their
        answers and collects every answer at exit::

            with client.pipeline() as p:
                for n in range(1000):
                    p.send(url, json={"n": n})
            p.ids        # the ids, in order

        At exit, if ffd refused any request, raises `PipelineRejected`
        listing each (`.rejected`), with the accepted ids (`.ids`)."""
        return Pipeline(self)


class Pipeline:
    """Pipelined sends on one Client; see `Client.pipeline`."""

    _FLUSH_AT = 64 * 1024

    def __init__(self, client: Client) -> None:
        self._client = client
        self.ids: List[str] = []
        self.rejected: List[Rejection] = []
        self._sent = 0
        self._answered = 0
        self._buf: List[bytes] = []
        self._buffered = 0
        self._rbuf = b""
        self._sock: Optional[_socket.socket] = None

    def __enter__(self) -> "Pipeline":
        c = self._client
        c._lock.acquire()
        try:
            if c._pipeline is not None:
                raise FfdError("a pipeline is already open on this client")
            if c._pid != os.getpid():
                c._drop()
            if c._sock is None:
                c._connect()
            assert c._sock is not None
            c._pipeline = self
            self._sock = c._sock
            # Non-blocking while the pipeline is open: a flush reads answers
            # whenever ffd cannot take more, so neither side waits on the other.
            self._sock.setblocking(False)
        except BaseException:
            c._lock.release()
            raise
        return self

    def send(
        self,
        url: Optional[str] = None,
        *,
        method: Optional[str] = None,
        headers: Optional[Headers] = None,
        json: Any = None,
        body: Optional[Body] = None,
        id: Optional[str] = None,
        dest: Optional[str] = None,
        path: Optional[str] = None,
        timeout_ms: Optional[int] = None,
        max_attempts: Optional[int] = None,
        ttl_ms: Optional[int] = None,
        delay_ms: Optional[int] = None,
    ) -> None:
        """Queues one request line; its answer is collected later."""
        line = _request(
            url, method, headers, json, body, id, dest, path, timeout_ms, max_attempts, ttl_ms, delay_ms
        )
        self._buf.append(line)
        self._buffered += len(line)
        self._sent += 1
        if self._buffered >= self._FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        """Writes what is buffered (reading the answers that arrive meanwhile)."""
        if self._sock is None:
            raise FfdError("the pipeline is not open: use it in a with-block")
        data = memoryview(b"".join(self._buf))
        self._buf.clear()
        self._buffered = 0
        sock = self._sock
        while data:
            try:
                n = sock.send(data)
                data = data[n:]
                continue
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError) as e:
                raise FfdError(f"the connection to ffd broke mid-pipeline: {e}") from None
            readable, writable, _ = select.select([sock], [sock], [], 60)
            if not readable and not writable:
                raise FfdError("ffd took neither lines nor gave answers for 60 s")
            if readable:
                self._read()

    def _read(self) -> bool:
        """Reads what has arrived; returns False at end of stream."""
        assert self._sock is not None
        while True:
            try:
                chunk = self._sock.recv(256 * 1024)
            except BlockingIOError:
                return True
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return False
            data = self._rbuf + chunk
            lines = data.split(b"\n")
            self._rbuf = lines.pop()
            ids = self.ids
            for raw in lines:
                # Nearly every answer is `{"ok":true,"id":"..."}` with a plain
                # id: taken apart here, it costs a tenth of `json.loads`.
                if raw.startswith(_OK_ID) and raw.endswith(b'"}') and raw.count(b'"') == 6 and b"\\" not in raw:
                    ids.append(raw[17:-2].decode())
                    self._answered += 1
                    continue
                answer = _answer(raw)
                if answer["ok"]:
                    self.ids.append(str(answer["id"]))
                else:
                    self.rejected.append(
                        Rejection(self._answered, str(answer.get("error")), str(answer.get("message")))
                    )
                self._answered += 1

    def _collect(self) -> None:
        self.flush()
        assert self._sock is not None
        while self._answered < self._sent:
            readable, _, _ = select.select([self._sock], [], [], 60)
            if not readable:
                raise FfdError(f"ffd answered {self._answered} of {self._sent} lines, then nothing for 60 s")
            if not self._read() and self._answered < self._sent:
                raise FfdError(
                    f"ffd closed the connection after answering {self._answered} of {self._sent} lines"
                )

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        c = self._client
        try:
            self._collect()
        except BaseException as e:
            # Answers may be left unread: the connection cannot be reused.
            c._drop()
            if exc_type is None or not isinstance(e, FfdError):
                raise
        finally:
            if c._sock is not None:
                c._sock.setblocking(True)
            c._pipeline = None
            c._lock.release()
        if self.rejected:
            err = PipelineRejected(self.rejected, self.ids)
            if exc_type is None:
                raise err
            if hasattr(exc, "add_note"):
                exc.add_note(str(err))


# The module-level send: one Client per thread of each process.
_local = threading.local()


def _thread_client() -> Client:
    c: Optional[Client] = getattr(_local, "client", None)
    if c is None or c._pid != os.getpid():
        if c is not None:
            # Inherited through fork: close our copy of the parent's socket.
            c._drop()
        c = Client()
        _local.client = c
    return c


def send(
    url: Optional[str] = None,
    *,
    method: Optional[str] = None,
    headers: Optional[Headers] = None,
    json: Any = None,
    body: Optional[Body] = None,
    id: Optional[str] = None,
    dest: Optional[str] = None,
    path: Optional[str] = None,
    timeout_ms: Optional[int] = None,
    max_attempts: Optional[int] = None,
    ttl_ms: Optional[int] = None,
    delay_ms: Optional[int] = None,
) -> str:
    """Hands one request to ffd on this thread's connection; returns its id.

    One connection per process and thread, opened on first use and again in
    a child after fork; a connection that broke is opened again once."""
    line = _request(url, method, headers, json, body, id, dest, path, timeout_ms, max_attempts, ttl_ms, delay_ms)
    return str(_ok(_thread_client()._call(line))["id"])
