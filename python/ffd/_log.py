"""`LogHandler`: logging records shipped through ffd as JSON."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Dict, Optional, Union

from ._client import Client, Headers

__all__ = ["LogHandler"]


class LogHandler(logging.Handler):
    """Sends each log record as a JSON body through ffd, like
    `logging.handlers.HTTPHandler` but without waiting for the server: emit
    costs one round trip to the local ffd, and ffd delivers with retries.

    `url` or `dest` (+ `path`) say where; `method`, `headers`, `timeout_ms`,
    `max_attempts`, `ttl_ms` are passed on with every record; `socket`
    overrides the socket path. The body is `map_record(record)`: override it
    to change the fields (default: logger, level, message, time, and where
    the record was made; `exc` holds a formatted traceback).

    A failure to hand the record to ffd goes to `handleError`, as with every
    logging handler: it never raises into the program.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        dest: Optional[str] = None,
        path: Optional[str] = None,
        method: Optional[str] = None,
        headers: Optional[Headers] = None,
        timeout_ms: Optional[int] = None,
        max_attempts: Optional[int] = None,
        ttl_ms: Optional[int] = None,
        socket: Union[str, "os.PathLike[str]", None] = None,
        level: Union[int, str] = logging.NOTSET,
    ) -> None:
        if (url is None) == (dest is None):
            raise ValueError("LogHandler needs url=... or dest=... (one of them)")
        super().__init__(level)
        self._fields: Dict[str, Any] = dict(
            url=url,
            dest=dest,
            path=path,
            method=method,
            headers=headers,
            timeout_ms=timeout_ms,
            max_attempts=max_attempts,
            ttl_ms=ttl_ms,
        )
        self._socket = socket
        self._clients = threading.local()

    def map_record(self, record: logging.LogRecord) -> Dict[str, Any]:
        """The JSON body for one record."""
        out: Dict[str, Any] = {
            "logger": record.name,
            "level": record.levelname,
            "message": record.getMessage(),
            "time": record.created,
            "file": record.pathname,
            "line": record.lineno,
            "function": record.funcName,
            "process": record.process,
            "thread": record.threadName,
        }
        if record.exc_info:
            out["exc"] = logging.Formatter().formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return out

    def _client(self) -> Client:
        c: Optional[Client] = getattr(self._clients, "client", None)
        if c is None:
            c = Client(self._socket)
            self._clients.client = c
        return c  # Client itself reconnects in a child after fork.

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._client().send(json=self.map_record(record), **self._fields)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        c: Optional[Client] = getattr(self._clients, "client", None)
        if c is not None:
            c.close()
        super().close()
