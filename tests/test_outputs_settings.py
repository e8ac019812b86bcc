"""Output settings (CONNECT_* variables, URL parsing, validation), build_outputs, and the
delivery task's idle behaviour (no polling)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
import trio

from connect.records import Batch, Entry
from connect.redact import redact_text
from outputs import OutputSettings, build_outputs
from outputs.mqtt import MqttOutput
from outputs.nightscout import NightscoutOutput
from outputs.settings import mqtt_target, nightscout_target
from store import AsyncStore, Store

SECRET = "a-long-enough-api-secret"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for key in list(os.environ):
        if key.startswith("CONNECT_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_nothing_configured_means_no_outputs(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = OutputSettings()
    store = Store(tmp_path / "s.db")
    assert build_outputs(settings, AsyncStore(store), httpx.AsyncClient()) == []
    assert settings.mqtt_topic_prefix == "nightscout" and settings.mqtt_qos == 1
    assert settings.mqtt_retain_current is False


def test_outputs_from_the_environment(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("CONNECT_NIGHTSCOUT_ENDPOINT", "my-site.example.org")
    clean_env.setenv("CONNECT_API_SECRET", SECRET)
    clean_env.setenv("CONNECT_MQTT_URL", "mqtts://cgm:p%40ss-word@broker.example:8884")
    clean_env.setenv("CONNECT_MQTT_TOPIC_PREFIX", "home/cgm/")
    clean_env.setenv("CONNECT_MQTT_RETAIN_CURRENT", "true")
    settings = OutputSettings()
    assert SECRET not in repr(settings) and "p%40ss" not in repr(settings)
    store = Store(tmp_path / "s.db")
    outputs = build_outputs(settings, AsyncStore(store), httpx.AsyncClient())
    assert [o.name for o in outputs] == ["nightscout", "mqtt"]
    ns, mq = outputs
    assert isinstance(ns, NightscoutOutput) and isinstance(mq, MqttOutput)
    assert ns.target() == "https://my-site.example.org"
    assert mq.target() == "mqtts://broker.example:8884"
    assert mq.broker.username == "cgm" and mq.broker.password == "p@ss-word"
    assert mq.topic_prefix == "home/cgm" and mq.retain_current
    assert mq.topic("entries", {"device": "share2"}) == "home/cgm/entries/share2"
    # registered with the redactor: the password never shows up in text written anywhere
    assert "p@ss-word" not in redact_text("login with p@ss-word failed")


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"CONNECT_NIGHTSCOUT_ENDPOINT": "https://site.example"}, "needs CONNECT_API_SECRET"),
        ({"CONNECT_NIGHTSCOUT_ENDPOINT": "ftp://site.example", "CONNECT_API_SECRET": SECRET}, "http:// or https://"),
        (
            {"CONNECT_NIGHTSCOUT_ENDPOINT": "http://127.0.0.1:13x8", "CONNECT_API_SECRET": SECRET},
            "invalid port",
        ),
        ({"CONNECT_NIGHTSCOUT_ENDPOINT": "javascript:alert(1)", "CONNECT_API_SECRET": SECRET}, "http://"),
        ({"CONNECT_NIGHTSCOUT_ENDPOINT": "http://x..y", "CONNECT_API_SECRET": SECRET}, "empty label"),
        ({"CONNECT_MQTT_URL": "mqtt://" + "a" * 64 + ".example"}, "longer than 63"),
        ({"CONNECT_MQTT_URL": "mqtt://broker:0"}, "1-65535"),
        (
            {"CONNECT_NIGHTSCOUT_ENDPOINT": "https://s.example", "CONNECT_API_SECRET": "short"},
            "12 characters",
        ),
        ({"CONNECT_MQTT_URL": "http://broker"}, "mqtt://"),
        ({"CONNECT_MQTT_URL": "mqtt://broker", "CONNECT_MQTT_QOS": "3"}, "less than or equal to 2"),
        ({"CONNECT_MQTT_URL": "mqtt://broker", "CONNECT_MQTT_TOPIC_PREFIX": "a/#"}, "wildcards"),
    ],
)
def test_bad_settings_are_reported_without_values(
    clean_env: pytest.MonkeyPatch, env: dict[str, str], problem: str
) -> None:
    for key, value in env.items():
        clean_env.setenv(key, value)
    with pytest.raises(pydantic.ValidationError) as caught:
        OutputSettings()
    text = str(caught.value)
    assert problem in text
    assert "short" not in str(caught.value.errors(include_input=False))


def test_token_in_the_endpoint_is_enough(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv(
        "CONNECT_NIGHTSCOUT_ENDPOINT", "https://site.example/api/v1/?token=uploader-0123456789abcdef"
    )
    settings = OutputSettings()
    store = Store(tmp_path / "s.db")
    (ns,) = build_outputs(settings, AsyncStore(store), httpx.AsyncClient())
    assert ns.target() == "https://site.example"
    assert "0123456789abcdef" not in str(ns.status())


def test_endpoint_and_broker_parsing() -> None:
    assert nightscout_target("site.example").base_url == "https://site.example"
    assert nightscout_target("http://127.0.0.1:1337/").base_url == "http://127.0.0.1:1337"
    assert nightscout_target("https://x.example/ns/api/v1").base_url == "https://x.example/ns"
    target = nightscout_target("https://x.example/?token=abc-0123456789abcdef")
    assert target.token == "abc-0123456789abcdef" and "abc-" not in repr(target)
    with pytest.raises(ValueError, match="credentials"):
        nightscout_target("https://user:pw@x.example")
    with pytest.raises(ValueError, match="query"):
        nightscout_target("https://x.example/?secret=abc")
    plain = mqtt_target("mqtt://broker.local")
    assert (plain.host, plain.port, plain.tls, plain.username) == ("broker.local", 1883, False, None)
    secure = mqtt_target("mqtts://u:pw@broker.local")
    assert (secure.port, secure.tls, secure.password) == (8883, True, "pw")
    assert "pw" not in repr(secure) and secure.display() == "mqtts://broker.local:8883"


class CountingStore(AsyncStore):
    """Runs store calls in the trio thread (virtual time stays honest) and counts them."""

    calls = 0

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        type(self).calls += 1
        await trio.lowlevel.checkpoint()
        return fn(*args, **kwargs)


async def test_an_idle_output_sleeps_until_woken(autojump_clock: trio.abc.Clock, tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    astore = CountingStore(store)
    posts: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posts.append(len(request.content))
        return httpx.Response(200, json=[])

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        out = NightscoutOutput("http://site.test", astore, client, api_secret=SECRET)
        async with trio.open_nursery() as nursery:
            await nursery.start(out.run)
            await trio.sleep(10 * 3600)  # ten idle hours: only the 15-minute safety wakes
            idle_calls = CountingStore.calls
            assert idle_calls <= 10 * 4 * 10 and posts == []
            store.persist_frame(
                "sim", "main", Batch.of([Entry(type="sgv", date=1_700_000_000_000, device="d", sgv=99)])
            )
            out.wake()
            await trio.sleep(0.001)
            assert len(posts) == 1 and out.state == "idle"
            nursery.cancel_scope.cancel()


def test_a_missing_or_broken_ca_bundle_is_a_settings_error(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("CONNECT_MQTT_URL", "mqtts://broker.example")
    # an empty value is no value (not the path "."): the system CAs
    clean_env.setenv("CONNECT_MQTT_CA_FILE", "")
    assert OutputSettings().mqtt_ca_file is None
    clean_env.setenv("CONNECT_MQTT_CA_FILE", str(tmp_path))
    with pytest.raises(pydantic.ValidationError, match="not a file"):
        OutputSettings()
    clean_env.setenv("CONNECT_MQTT_CA_FILE", str(tmp_path / "nowhere.pem"))
    with pytest.raises(pydantic.ValidationError, match="no CA bundle at"):
        OutputSettings()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    clean_env.setenv("CONNECT_MQTT_CA_FILE", str(garbage))
    with pytest.raises(pydantic.ValidationError, match="not a readable PEM CA bundle"):
        OutputSettings()
