"""A private mosquitto for the MQTT figure: its own config, a free loopback port, stopped after.

``MOSQUITTO_BINARY`` names the broker to run; otherwise ``mosquitto`` on the PATH or in an sbin
directory. The config lifts mosquitto's queue and in-flight limits (its default of 1000 queued
messages would drop part of a QoS 1 burst) and keeps nothing on disk.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

SBIN = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def mosquitto_binary() -> str:
    named = os.environ.get("MOSQUITTO_BINARY")
    found = named or shutil.which("mosquitto") or next((p for p in SBIN if Path(p).is_file()), None)
    if found is None or not Path(found).is_file():
        raise FileNotFoundError("mosquitto is not installed (apt-get install -y mosquitto)")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Mosquitto:
    """``with Mosquitto(workdir) as url:`` a broker listening at ``url`` for the block's length."""

    def __init__(self, workdir: Path) -> None:
        self.binary = mosquitto_binary()
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.log = workdir / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "mosquitto.conf"
        config.write_text(
            "\n".join(
                [
                    f"listener {self.port} 127.0.0.1",
                    "allow_anonymous true",
                    "max_queued_messages 0",
                    "max_inflight_messages 0",
                    "persistence false",
                    # started as root, mosquitto would switch to its own user
                    f"user {pwd.getpwuid(os.getuid()).pw_name}",
                    "log_dest stderr",
                    "log_type error",
                ]
            )
            + "\n"
        )
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_listening(timeout=10.0)
        except BaseException:
            self._stop()
            raise
        return self.url

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()

    def _wait_listening(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start listening")

    def _stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
