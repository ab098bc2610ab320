"""ffd: hand HTTP requests to the local ffd relay, fire and forget.

    import ffd
    ffd.send("http://127.0.0.1:8080/hook", json={"user": 42})

`send` returns once ffd holds the request (tens of microseconds); ffd
delivers it in the background with retries and a durable spool. Standard
library only. See `Client` (pipelining, status, stats), `ffd.aio` for
asyncio, and `LogHandler` for logging.
"""

from ._client import (
    Client,
    FfdError,
    Pipeline,
    PipelineRejected,
    Rejected,
    Rejection,
    Unreachable,
    default_socket,
    send,
)
from . import aio
from ._log import LogHandler

__all__ = [
    "Client",
    "FfdError",
    "LogHandler",
    "Pipeline",
    "PipelineRejected",
    "Rejected",
    "Rejection",
    "Unreachable",
    "default_socket",
    "send",
]
__version__ = "0.1.0"
