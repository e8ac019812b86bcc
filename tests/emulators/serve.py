"""Serve an ASGI app on a loopback port from a background thread, for synchronous clients.

Independent clients such as pydexcom use ``requests``; they need a real socket. The app runs
under hypercorn's asyncio worker in its own thread and event loop, so the test thread stays
free to call the client. The listening socket is bound before the thread starts (port 0, so
the kernel picks a free one), which means there is no race between "started" and "ready".
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config


@contextlib.contextmanager
def serve_in_thread(app: Any, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` on ``host:port`` while the block runs; yields the base URL ``http://host:port``."""
    sock = _listening_socket(host, port)
    bound_port = sock.getsockname()[1]
    config = _config(sock)

    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
        except BaseException as exc:  # reported to the test thread on exit
            failure.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="emulator-server", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        with contextlib.suppress(OSError):
            sock.close()
    if failure:
        raise RuntimeError(f"emulator server failed: {failure[0]!r}")


def _listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _config(sock: socket.socket) -> Config:
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    return config


def serve_forever(app: Any, *, host: str = "127.0.0.1", port: int = 0) -> None:
    """Serve ``app`` in the foreground until interrupted (``python -m tests.emulators.<vendor>``).

    The first line on stdout is ``listening on http://host:port``, so a test that starts the
    emulator as a subprocess with port 0 learns the port the kernel chose.
    """
    sock = _listening_socket(host, port)
    print(f"listening on http://{host}:{sock.getsockname()[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(app, _config(sock)))  # type: ignore[arg-type]
