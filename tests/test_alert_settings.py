"""Alert and event-output settings: Nightscout's names (prefixed and not), units, webhooks from
variables and from a JSON or TOML file, the loop guard, and the errors a person sees."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from connect.loading import UsageError, load_settings
from machines.alerts import MIN_MS
from outputs.alert_settings import AlertSettings, HookSpec, points_at


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("CONNECT_") or key.startswith(("BG_", "ALARM_", "DISPLAY_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CONNECT_SOURCE", "sim")
    monkeypatch.setenv("CONNECT_STORE_PATH", ":memory:")
    monkeypatch.setenv("CONNECT_HTTP_BIND", "127.0.0.1:1338")
    return monkeypatch


def problems(*args: str) -> list[str]:
    with pytest.raises(UsageError) as caught:
        load_settings(list(args))
    return caught.value.lines


def test_defaults_are_nightscouts(env: pytest.MonkeyPatch) -> None:
    settings, _ = load_settings([])
    assert isinstance(settings, AlertSettings)
    t = settings.thresholds()
    assert (t.urgent_low, t.low, t.high, t.urgent_high) == (55, 80, 180, 260)
    assert (t.stale_ms, t.urgent_stale_ms, t.repeat_ms) == (15 * MIN_MS, 30 * MIN_MS, 30 * MIN_MS)
    assert t.hysteresis == 5
    assert settings.hooks() == [] and settings.notify_targets() == []


def test_a_sites_own_names_carry_over_and_ours_win(env: pytest.MonkeyPatch) -> None:
    env.setenv("BG_LOW", "60")
    env.setenv("BG_TARGET_BOTTOM", "75")
    env.setenv("BG_HIGH", "250")
    env.setenv("CONNECT_BG_HIGH", "240")
    env.setenv("ALARM_TIMEAGO_WARN_MINS", "20")
    settings, _ = load_settings([])
    t = settings.thresholds()  # type: ignore[attr-defined]
    assert (t.urgent_low, t.low, t.high, t.urgent_high) == (60, 75, 180, 240)
    assert t.stale_ms == 20 * MIN_MS
    assert "BG_LOW" not in os.environ or os.environ["BG_LOW"] == "60"  # the environment is left as it was
    assert "CONNECT_BG_LOW" not in os.environ


def test_mmol_thresholds_as_nightscout_reads_them(env: pytest.MonkeyPatch) -> None:
    env.setenv("DISPLAY_UNITS", "mmol")
    for name, value in (
        ("BG_LOW", "3.1"),
        ("BG_TARGET_BOTTOM", "4.4"),
        ("BG_TARGET_TOP", "10"),
        ("BG_HIGH", "14.4"),
    ):
        env.setenv(name, value)
    env.setenv("CONNECT_ALERT_HYSTERESIS", "0.3")
    settings, _ = load_settings([])
    t = settings.thresholds()  # type: ignore[attr-defined]
    assert (t.urgent_low, t.low, t.high, t.urgent_high) == (56, 79, 180, 259)
    assert t.hysteresis == pytest.approx(5.4)


def test_thresholds_in_the_wrong_units_or_order_are_refused(env: pytest.MonkeyPatch) -> None:
    lines = problems(
        "--bg-low", "3.1", "--bg-target-bottom", "4.4", "--bg-target-top", "10", "--bg-high", "14"
    )
    assert len(lines) == 1 and "CONNECT_DISPLAY_UNITS=mmol" in lines[0]
    lines = problems("--bg-low", "90")
    assert "BG_LOW < BG_TARGET_BOTTOM" in lines[0]
    assert problems("--display-units", "furlongs") == [
        "--display-units / CONNECT_DISPLAY_UNITS: must be mg/dl or mmol"
    ]


def test_one_webhook_from_variables(env: pytest.MonkeyPatch) -> None:
    env.setenv("CONNECT_WEBHOOK_URL", "https://hooks.example/cgm")
    env.setenv("CONNECT_WEBHOOK_SECRET", "hook-secret-value")
    env.setenv("CONNECT_WEBHOOK_EVENTS", "alert:raised, alert:cleared")
    env.setenv("CONNECT_WEBHOOK_FILTER", "data.kind == 'low'")
    settings, _ = load_settings([])
    (hook,) = settings.hooks()  # type: ignore[attr-defined]
    assert hook == HookSpec(
        name="webhook",
        url="https://hooks.example/cgm",
        secret="hook-secret-value",
        events=frozenset({"alert:raised", "alert:cleared"}),
        filter="data.kind == 'low'",
        timeout=10.0,
    )
    assert "hook-secret-value" not in repr(settings) and "hook-secret-value" not in repr(hook)


def test_bad_webhook_settings_are_reported(env: pytest.MonkeyPatch) -> None:
    env.setenv("CONNECT_WEBHOOK_URL", "ftp://nope")
    env.setenv("CONNECT_WEBHOOK_EVENTS", "alert:raised,glucose:old")
    env.setenv("CONNECT_WEBHOOK_FILTER", "data.[")
    lines = problems()
    assert any(
        line.startswith("--webhook-url / CONNECT_WEBHOOK_URL: must be an http(s) URL") for line in lines
    )
    assert any("1 unknown event name(s)" in line for line in lines)
    assert not any("glucose:old" in line for line in lines)  # a value is never echoed
    assert any(
        line.startswith("--webhook-filter / CONNECT_WEBHOOK_FILTER: not a JMESPath expression")
        for line in lines
    )


@pytest.mark.parametrize("fmt", ["json", "toml"])
def test_several_webhooks_from_a_file(env: pytest.MonkeyPatch, tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"hooks.{fmt}"
    if fmt == "json":
        path.write_text(
            json.dumps(
                {
                    "webhooks": [
                        {
                            "name": "ha",
                            "url": "http://ha.local:8123/api/webhook/cgm",
                            "events": ["glucose:new"],
                        },
                        {
                            "url": "https://alerts.example/in",
                            "secret": "s3cr3t-in-file",
                            "filter": "data.sgv < `70`",
                        },
                    ]
                }
            )
        )
    else:
        path.write_text(
            '[[webhooks]]\nname = "ha"\nurl = "http://ha.local:8123/api/webhook/cgm"\nevents = "glucose:new"\n\n'
            '[[webhooks]]\nurl = "https://alerts.example/in"\nsecret = "s3cr3t-in-file"\nfilter = "data.sgv < `70`"\n'
        )
    env.setenv("CONNECT_WEBHOOKS_FILE", str(path))
    settings, _ = load_settings([])
    hooks = settings.hooks()  # type: ignore[attr-defined]
    assert [h.name for h in hooks] == ["webhook:ha", "webhook:alerts.example"]
    assert hooks[0].events == frozenset({"glucose:new"}) and hooks[1].events is None
    assert hooks[1].secret == "s3cr3t-in-file" and hooks[1].filter == "data.sgv < `70`"


def test_a_bad_webhooks_file_is_reported_with_its_setting(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "hooks.json"
    path.write_text(json.dumps([{"url": "https://a.example", "filter": "(("}]))
    env.setenv("CONNECT_WEBHOOKS_FILE", str(path))
    (line,) = problems()
    assert line.startswith("--webhooks-file / CONNECT_WEBHOOKS_FILE: hook 1: not a JMESPath expression")
    path.write_text("{not json")
    (line,) = problems()
    assert "is not valid JSON" in line


def test_a_webhook_pointing_back_at_our_api_is_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv("CONNECT_WEBHOOK_URL", "http://localhost:1338/api/v1/entries")
    (line,) = problems()
    assert "points back at this daemon's own API" in line
    assert points_at("http://127.0.0.1:1338/x", "0.0.0.0:1338")
    assert points_at("http://[::1]:1338/x", "127.0.0.1:1338")
    assert not points_at("http://127.0.0.1:1339/x", "127.0.0.1:1338")
    assert not points_at("https://hooks.example/x", "127.0.0.1:443")
    env.setenv("CONNECT_HTTP_BIND", "0")
    load_settings([])  # no API, nothing to loop through


def test_notify_urls_are_checked_without_quoting_them(env: pytest.MonkeyPatch) -> None:
    env.setenv("CONNECT_NOTIFY_URLS", "json://localhost:9/hook, ntfy://my-topic")
    settings, _ = load_settings([])
    assert settings.notify_targets() == ["json://localhost:9/hook", "ntfy://my-topic"]  # type: ignore[attr-defined]
    env.setenv("CONNECT_NOTIFY_URLS", "json://localhost:9/hook nosuch://tok3n-value@x")
    (line,) = problems()
    assert "URL 2 is not one Apprise can send to" in line and "tok3n" not in line and "nosuch" not in line
