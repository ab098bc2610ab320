"""ffd for asyncio programs: `await ffd.aio.send(...)` never blocks the event loop.

One connection per event loop (and process), shared by every task of that
loop: each send writes its line and awaits its own answer, so many tasks may
send at once and their lines travel pipelined on the one connection.
"""

from __future__ import annotations

import asyncio
import collections
import os
import weakref
from typing import Any, Deque, Dict, Optional

from ._client import (
    Body,
    FfdError,
    Headers,
    Unreachable,
    _answer,
    _ok,
    _request,
    default_socket,
)

__all__ = ["send", "close"]


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pid = os.getpid()
        self.waiting: Deque["asyncio.Future[Dict[str, Any]]"] = collections.deque()
        self.broken: Optional[str] = None
        self.task = asyncio.get_running_loop().create_task(self._read_answers())

    async def _read_answers(self) -> None:
        # Answers come in the order of the lines: each goes to the oldest waiter.
        try:
            await self._read_loop()
        finally:
            # Also when the loop ends and cancels this task (asyncio.run).
            self.writer.close()

    async def _read_loop(self) -> None:
        try:
            while True:
                raw = await self.reader.readline()
                if not raw:
                    break
                fut = self.waiting.popleft()
                if not fut.done():
                    try:
                        fut.set_result(_answer(raw))
                    except FfdError as e:
                        fut.set_exception(e)
        except (ConnectionError, OSError, IndexError) as e:
            self.broken = str(e) or type(e).__name__
        self.broken = self.broken or "ffd closed the connection"
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(_BrokenAio(self.broken))

    async def call(self, line: bytes) -> Dict[str, Any]:
        fut: "asyncio.Future[Dict[str, Any]]" = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        self.writer.write(line)
        return await fut


class _BrokenAio(Exception):
    pass


_conns: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Conn]" = weakref.WeakKeyDictionary()
_opening: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Future[_Conn]]" = (
    weakref.WeakKeyDictionary()
)


async def _open(socket: Optional[str]) -> _Conn:
    path, how = (socket, "given to ffd.aio") if socket else default_socket()
    try:
        reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
    except OSError as e:
        raise Unreachable(path, how, e) from None
    return _Conn(reader, writer)


async def _conn() -> _Conn:
    loop = asyncio.get_running_loop()
    c = _conns.get(loop)
    if c is not None and c.broken is None and c.pid == os.getpid():
        return c
    # One opener per loop: tasks that start together share one connection.
    pending = _opening.get(loop)
    if pending is None:
        pending = loop.create_future()
        _opening[loop] = pending
        try:
            c = await _open(None)
            _conns[loop] = c
            pending.set_result(c)
        except BaseException as e:
            pending.set_exception(e)
            # Mark retrieved: the other waiters (if any) re-raise it.
            pending.exception()
            raise
        finally:
            del _opening[loop]
        return c
    return await asyncio.shield(pending)


async def send(
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

    Same fields as `ffd.send`. A connection that broke before ffd answered is
    opened again once (ffd answers every line it has read)."""
    line = _request(url, method, headers, json, body, id, dest, path, timeout_ms, max_attempts, ttl_ms, delay_ms)
    c = await _conn()
    try:
        answer = await c.call(line)
    except _BrokenAio:
        c = await _conn()
        try:
            answer = await c.call(line)
        except _BrokenAio as e:
            raise FfdError(f"the connection to ffd broke: {e}") from None
    return str(_ok(answer)["id"])


async def close() -> None:
    """Closes this loop's connection (sends made before were acknowledged)."""
    c = _conns.pop(asyncio.get_running_loop(), None)
    if c is not None:
        c.writer.close()
        try:
            await c.writer.wait_closed()
        except OSError:
            pass
        c.task.cancel()
