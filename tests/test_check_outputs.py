"""``check`` tries every configured output without writing: the Nightscout site's answer to the
credential, the MQTT broker's to the login; one line each, exit 1 when one cannot deliver, and
no secret in what it prints."""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.clirun import cli
from tests.emulators.nightscout import NightscoutEmulator, serve_in_thread
from tests.mosquitto import Broker, Subscriber, free_port

pytestmark = pytest.mark.e2e

SECRET = "check-site-api-secret"
WRONG = "not-the-site-api-secret"
MQTT_USER = "connect"
MQTT_PASSWORD = "mqtt-check-password"


@pytest.fixture
def site() -> Iterator[tuple[NightscoutEmulator, str]]:
    emulator = NightscoutEmulator(SECRET)
    url, stop = serve_in_thread(emulator)
    try:
        yield emulator, url
    finally:
        stop()


def check(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    return cli("check", CONNECT_SOURCE="sim", CONNECT_STORE_PATH=str(tmp_path / "never.db"), **settings)


def output_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("output")]


def assert_secret_free(result: subprocess.CompletedProcess[str], *secrets: str) -> None:
    text = result.stdout + result.stderr
    for secret in secrets:
        for form in (secret, hashlib.sha1(secret.encode()).hexdigest()):
            assert form not in text


def test_nightscout_with_the_right_and_a_wrong_secret(
    tmp_path: Path, site: tuple[NightscoutEmulator, str]
) -> None:
    emulator, url = site
    good = check(tmp_path, CONNECT_NIGHTSCOUT_ENDPOINT=url, CONNECT_API_SECRET=SECRET)
    assert good.returncode == 0, good.stdout + good.stderr
    assert output_lines(good) == [f"output nightscout {url}: ok, can write"]

    bad = check(tmp_path, CONNECT_NIGHTSCOUT_ENDPOINT=url, CONNECT_API_SECRET=WRONG)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert output_lines(bad) == [f"output nightscout {url}: refused the secret (HTTP 401)"]
    assert "Traceback" not in bad.stderr
    assert_secret_free(good, SECRET)
    assert_secret_free(bad, SECRET, WRONG)
    # nothing was written, and the store was never opened
    assert all(r.method == "GET" for r in emulator.requests)
    assert emulator.counts == {"entries": 0, "treatments": 0, "devicestatus": 0, "profile": 0}
    assert not (tmp_path / "never.db").exists()


def test_nightscout_tokens_that_can_and_cannot_write(
    tmp_path: Path, site: tuple[NightscoutEmulator, str]
) -> None:
    emulator, url = site
    uploader = emulator.add_subject("uploader", ["admin"])
    follower = emulator.add_subject("follower", ["readable"])
    good = check(tmp_path, CONNECT_NIGHTSCOUT_ENDPOINT=url, CONNECT_NIGHTSCOUT_TOKEN=uploader)
    assert good.returncode == 0 and output_lines(good) == [f"output nightscout {url}: ok, can write"]
    reader = check(tmp_path, CONNECT_NIGHTSCOUT_ENDPOINT=url, CONNECT_NIGHTSCOUT_TOKEN=follower)
    assert reader.returncode == 1
    (line,) = output_lines(reader)
    assert line.startswith(f"output nightscout {url}: accepted the token, but it may not write")
    wrong = check(
        tmp_path, CONNECT_NIGHTSCOUT_ENDPOINT=url, CONNECT_NIGHTSCOUT_TOKEN="nobody-0123456789abcdef"
    )
    assert output_lines(wrong) == [f"output nightscout {url}: refused the token (HTTP 401)"]
    for result in (good, reader, wrong):
        assert_secret_free(result, uploader, follower, "nobody-0123456789abcdef")


def test_a_dead_nightscout_endpoint_fails_check(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    result = check(tmp_path, CONNECT_NIGHTSCOUT_ENDPOINT=dead, CONNECT_API_SECRET=SECRET)
    assert result.returncode == 1
    assert output_lines(result) == [
        f"output nightscout {dead}: failed (Unreachable: GET /api/v1/verifyauth: ConnectError)"
    ]


def test_mqtt_stopped_and_running_brokers(tmp_path: Path, mosquitto_factory: Callable[..., Broker]) -> None:
    stopped = free_port()
    down = check(tmp_path, CONNECT_MQTT_URL=f"mqtt://{MQTT_USER}:{MQTT_PASSWORD}@127.0.0.1:{stopped}")
    assert down.returncode == 1
    assert output_lines(down) == [
        f"output mqtt mqtt://127.0.0.1:{stopped}: unreachable (ConnectionRefusedError)"
    ]

    broker = mosquitto_factory(users={MQTT_USER: MQTT_PASSWORD, "watcher": "watcher-password"})
    watcher = Subscriber(broker.port, "#", username="watcher", password="watcher-password").start()
    try:
        url = f"mqtt://{MQTT_USER}:{MQTT_PASSWORD}@127.0.0.1:{broker.port}"
        good = check(tmp_path, CONNECT_MQTT_URL=url, CONNECT_MQTT_RETAIN_CURRENT="true")
        assert good.returncode == 0, good.stdout + good.stderr
        assert output_lines(good) == [f"output mqtt mqtt://127.0.0.1:{broker.port}: ok, logged in"]
        refused = check(tmp_path, CONNECT_MQTT_URL=f"mqtt://{MQTT_USER}:{WRONG}@127.0.0.1:{broker.port}")
        assert refused.returncode == 1
        assert output_lines(refused) == [f"output mqtt mqtt://127.0.0.1:{broker.port}: refused the login"]
        time.sleep(0.3)
        assert watcher.snapshot() == []  # check published nothing
    finally:
        watcher.stop()
    assert_secret_free(down, MQTT_PASSWORD)
    assert_secret_free(good, MQTT_PASSWORD)
    assert_secret_free(refused, MQTT_PASSWORD, WRONG)


def test_every_output_gets_its_line_and_one_failure_fails_check(
    tmp_path: Path, site: tuple[NightscoutEmulator, str]
) -> None:
    _emulator, url = site
    stopped = free_port()
    result = check(
        tmp_path,
        CONNECT_NIGHTSCOUT_ENDPOINT=url,
        CONNECT_API_SECRET=SECRET,
        CONNECT_MQTT_URL=f"mqtt://127.0.0.1:{stopped}",
    )
    assert result.returncode == 1
    assert output_lines(result) == [
        f"output nightscout {url}: ok, can write",
        f"output mqtt mqtt://127.0.0.1:{stopped}: unreachable (ConnectionRefusedError)",
    ]
    assert "login: not needed" in result.stdout
    none = check(tmp_path)
    assert none.returncode == 0 and "outputs: none" in none.stdout


def subscription_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("mqtt source")]


def test_check_tries_the_subscription(tmp_path: Path, mosquitto_factory: Callable[..., Broker]) -> None:
    """The MQTT source's broker: reached, logged in to, every topic filter subscribed; or the
    reason it is not, without the password; and nothing is stored."""
    stopped = free_port()
    down = cli(
        "check",
        CONNECT_SOURCE="mqtt",
        CONNECT_STORE_PATH=str(tmp_path / "never.db"),
        CONNECT_MQTT_SOURCE_URL=f"mqtt://{MQTT_USER}:{MQTT_PASSWORD}@127.0.0.1:{stopped}",
    )
    assert down.returncode == 1, down.stdout + down.stderr
    assert subscription_lines(down) == [
        f"mqtt source mqtt://127.0.0.1:{stopped}: unreachable (ConnectionRefusedError)"
    ]

    broker = mosquitto_factory(users={MQTT_USER: MQTT_PASSWORD})
    where = f"127.0.0.1:{broker.port}"

    def check_source(password: str, topics: str) -> subprocess.CompletedProcess[str]:
        return cli(
            "check",
            CONNECT_SOURCE="mqtt",
            CONNECT_STORE_PATH=str(tmp_path / "never.db"),
            CONNECT_MQTT_SOURCE_URL=f"mqtt://{MQTT_USER}:{password}@{where}",
            CONNECT_MQTT_SOURCE_TOPICS=topics,
        )

    good = check_source(MQTT_PASSWORD, "cgm/#, loop/devicestatus")
    assert good.returncode == 0, good.stdout + good.stderr
    assert subscription_lines(good) == [
        f"mqtt source mqtt://{where}: ok, logged in and subscribed to cgm/#, loop/devicestatus"
    ]
    refused = check_source(WRONG, "cgm/#")
    assert refused.returncode == 1
    assert subscription_lines(refused) == [f"mqtt source mqtt://{where}: refused the login"]
    assert not (tmp_path / "never.db").exists()
    for result in (down, good, refused):
        assert_secret_free(result, MQTT_PASSWORD, WRONG)
