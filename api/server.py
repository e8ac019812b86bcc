"""Serving the app with hypercorn's trio worker, inside the daemon's nursery.

    binds = await nursery.start(serve, app, "127.0.0.1:1338")

``nursery.start`` returns once the socket listens (with the bound URLs, useful with port 0);
cancelling the nursery closes the listener and every connection.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from connect.errors import ConfigError

#: hypercorn's own messages ("Running on …"); it never sees request URLs (no access log)
server_log = logging.getLogger("api.server")


def server_config(bind: str, *, graceful_timeout: float = 5.0) -> Config:
    config = Config()
    config.bind = [bind]
    # an access log would write query strings, and ?token= carries the secret
    config.accesslog = None
    config.errorlog = server_log
    config.graceful_timeout = graceful_timeout
    config.include_server_header = False
    return config


async def serve(
    app: Any,
    bind: str,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``bind`` until cancelled (or until ``shutdown_trigger`` returns, which
    lets requests in flight finish first)."""
    if bind.strip() in ("", "0"):
        raise ConfigError("--http-bind / CONNECT_HTTP_BIND: the API is disabled (0); do not start it")
    try:
        await hypercorn_serve(
            app, server_config(bind), shutdown_trigger=shutdown_trigger, task_status=task_status
        )
    except (OSError, BaseExceptionGroup) as exc:
        # e.g. the port is taken: a settings problem a person must fix, said in one line
        error = _only_os_error(exc)
        if error is None:
            raise
        reason = error.strerror or str(error)
        raise ConfigError(f"--http-bind / CONNECT_HTTP_BIND: cannot listen on {bind}: {reason}") from None


def _only_os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` when that is all it is (trio nests it in exception groups)."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(OSError)
        if matched is not None and rest is None:
            leaf: BaseException = matched
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            return leaf if isinstance(leaf, OSError) else None
    return None
