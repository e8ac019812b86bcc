"""Every setting, any value: the settings are read the way the CLI reads them, and the outcome is
settings (exit 0) or a list of problems (exit 2), one line each naming the flag and the variable,
never a traceback, and never the value itself (it may be a secret).

The settings come from the settings models of every installed source (the core's, the outputs'
and the API's included) and the old names those sources read. Most examples run in-process;
a few run ``check`` as a subprocess with the worst values at once.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from connect.fields import MAX_SECRET_LENGTH, MAX_VALUE_LENGTH
from connect.loading import UsageError, load_settings
from connect.settings import (
    SITE_LEGACY_ENV,
    env_for,
    flag_for,
    known_sources,
    load_source,
    preserved_environ,
    settings_model,
)
from tests.clirun import FOREIGN, cli

HUGE = 100_000
#: a valid value for each required setting of a source, so that the fuzzed ones decide
REQUIRED = {
    "share_account_name": "publisher@example.org",
    "share_password": "share-password-1",
    "link_up_username": "follower@example.org",
    "link_up_password": "libre-password-1",
    "carelink_token_file": "carelink-tokens.json",
    "glooko_email": "me@example.org",
    "glooko_password": "glooko-password-1",
    "source_endpoint": "https://source.example.org",
}
SOURCES = sorted(known_sources())
LINE = re.compile(r"^--[a-z0-9-]+ / CONNECT_[A-Z0-9_]+: \S")


@functools.cache
def variables_of(source: str) -> dict[str, str]:
    """Every variable a run of ``source`` reads → the variable of ours it sets."""
    info = load_source(source)
    names = {env_for(name): env_for(name) for name in settings_model(info).model_fields}
    names.update(SITE_LEGACY_ENV)
    names.update(info.legacy_env)
    return names


@functools.cache
def baseline(source: str) -> dict[str, str]:
    model = settings_model(load_source(source))
    env = {"CONNECT_SOURCE": source, "CONNECT_HTTP_BIND": "0"}
    for name, field in model.model_fields.items():
        if field.is_required():
            assert name in REQUIRED, f"give the test a valid value for {name}"
            env[env_for(name)] = REQUIRED[name]
    return env


# -- values ----------------------------------------------------------------------------------------

# what an environment or a command line can carry: no NUL, no lone surrogates
CHARS = st.characters(exclude_categories=("Cs",), exclude_characters="\0")
garbage = st.text(CHARS, min_size=1, max_size=40)
unicode = st.text(st.characters(min_codepoint=0x80, exclude_categories=("Cs",)), min_size=1, max_size=30)
huge = st.text(CHARS, min_size=1, max_size=8).map(lambda t: (t * (HUGE // len(t) + 1))[:HUGE])
empty = st.sampled_from(["", " ", "\t", "  \n"])
hosts = st.one_of(
    st.sampled_from(
        ["x..y", "a" * 64 + ".example", ".", "-", "bü..cher.de", "[::1", "127.0.0.1:13x8", "é" * 70]
    ),
    st.text(CHARS, min_size=1, max_size=20),
)
urls = st.one_of(
    st.builds(lambda s, h, p: f"{s}://{h}{p}", st.sampled_from(["http", "https", "mqtt", "mqtts", "ftp", "javascript"]),
              hosts, st.sampled_from(["", ":0", ":65536", ":1338", ":x", "/api/v1?token=t0ken-value"])),
    st.sampled_from(["javascript:alert(1)", "http://", "mqtt://", "//host", "http://user:pw-secret-9@host"]),
)  # fmt: skip
values = st.one_of(garbage, unicode, huge, empty, urls)


def problems_of(source: str, given: dict[str, str], args: list[str]) -> list[str] | None:
    """None when the settings load, else the problem lines, as the CLI would print them."""
    with preserved_environ():
        for key in [k for k in os.environ if FOREIGN.match(k)]:
            del os.environ[key]
        os.environ.update({**baseline(source), **given})
        try:
            load_settings(args)
        except UsageError as exc:
            return exc.lines
    return None


def check_lines(lines: list[str], fuzzed: dict[str, str], targets: set[str]) -> None:
    assert lines, "a refusal names at least one problem"
    for line in lines:
        assert line.strip() and "\n" not in line and "\r" not in line, line
        assert "Traceback" not in line
        # the flag and the variable, or (a check across settings) the variables it compares
        if line.startswith("unknown flags: "):
            # the flags of a source nobody chose (its name was the fuzzed value)
            assert any(other.startswith("--source / CONNECT_SOURCE") for other in lines), lines
            continue
        assert LINE.match(line) or ("CONNECT_" in line and not line.startswith("--")), line
        named = set(re.findall(r"CONNECT_[A-Z0-9_]+", line))
        assert named & targets or line.startswith("--source / CONNECT_SOURCE"), (line, sorted(targets))
    text = "\n".join(lines)
    for value in fuzzed.values():
        shown = value.strip()
        if len(shown) >= 8:
            assert shown[:64] not in text, "a value was quoted back"


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)  # relative paths the values name stay in here
    yield


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), source=st.sampled_from(SOURCES))
def test_any_value_of_any_setting_is_settings_or_one_line_per_problem(
    data: st.DataObject, source: str
) -> None:
    names = variables_of(source)
    chosen = data.draw(st.lists(st.sampled_from(sorted(names)), min_size=1, max_size=4, unique=True))
    fuzzed = {name: data.draw(values, label=name) for name in chosen}
    # some as flags (--share-server=…) rather than variables, the way a command line gives them
    as_flags = {
        n for n in chosen if n.startswith("CONNECT_") and data.draw(st.booleans(), label=f"{n} as flag")
    }
    env = {n: v for n, v in fuzzed.items() if n not in as_flags}
    args = [f"{flag_for(n.removeprefix('CONNECT_').lower())}={fuzzed[n]}" for n in sorted(as_flags)]
    lines = problems_of(source, env, args)
    event("refused" if lines else "accepted")
    if lines is not None:
        targets = set(fuzzed) | {names[n] for n in fuzzed}
        check_lines(lines, fuzzed, targets)


@pytest.mark.parametrize("source", SOURCES)
def test_every_setting_empty_is_every_setting_unset(source: str) -> None:
    names = variables_of(source)
    required = set(baseline(source)) - {"CONNECT_SOURCE"}
    assert problems_of(source, dict.fromkeys(set(names) - required - {"CONNECT_SOURCE"}, ""), []) is None
    # a required setting left empty is reported as not set
    for name in required - {"CONNECT_HTTP_BIND"}:
        lines = problems_of(source, {name: " "}, [])
        assert lines is not None and lines[0].endswith("required but not set"), lines


@pytest.mark.parametrize("source", SOURCES)
def test_every_setting_is_capped(source: str) -> None:
    # the settings every run has are tried with the simulator, each source's with its source
    common = set(variables_of("sim")) - {env_for(n) for n in load_source("sim").settings.model_fields}
    for name in variables_of(source):
        if (
            not name.startswith("CONNECT_")
            or name == "CONNECT_SOURCE"
            or (source != "sim" and name in common)
        ):
            continue
        named = f"{flag_for(name.removeprefix('CONNECT_').lower())} / {name}"
        lines = problems_of(source, {name: "x" * (MAX_VALUE_LENGTH + 1)}, [])
        if lines == [f"{named}: longer than {MAX_SECRET_LENGTH} characters"]:
            # a secret has the lower cap
            assert problems_of(source, {name: "x" * (MAX_SECRET_LENGTH + 1)}, []) == lines
        else:
            assert lines == [f"{named}: longer than {MAX_VALUE_LENGTH} characters"], lines


# -- the real command line -------------------------------------------------------------------------


def test_check_reports_every_bad_setting_at_once_without_a_traceback(tmp_path: Path) -> None:
    secret = "S3cret-" * (HUGE // 7)
    bad = {
        "CONNECT_SHARE_PASSWORD": secret,
        "CONNECT_SHARE_SERVER": "http://x..y",
        "CONNECT_HTTP_BIND": "nowhere-at-all",
        "CONNECT_MQTT_URL": "mqtts://broker.example",
        "CONNECT_MQTT_CA_FILE": "ca/" * (HUGE // 3),
        "CONNECT_NIGHTSCOUT_ENDPOINT": "http://127.0.0.1:13x8",
        "CONNECT_BACKFILL_DAYS": "dréi tage",
    }
    started = time.monotonic()
    result = cli(
        "check", CONNECT_SOURCE="dexcomshare", CONNECT_SHARE_ACCOUNT_NAME="publisher",
        CONNECT_API_SECRET="the-site-secret-1", CONNECT_STORE_PATH=str(tmp_path / "s.db"), **bad,
    )  # fmt: skip
    assert time.monotonic() - started < 20
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line.removeprefix("nightscout-connect: ") for line in result.stderr.strip().splitlines()]
    named = sorted(re.findall(r" / (CONNECT_[A-Z_]+):", "\n".join(lines)))
    assert named == sorted(set(bad) - {"CONNECT_MQTT_URL"}), lines
    for name, value in bad.items():
        assert name == "CONNECT_MQTT_URL" or value[:40] not in result.stderr + result.stdout
    assert not (tmp_path / "s.db").exists()


def test_check_with_every_setting_empty_runs(tmp_path: Path) -> None:
    empties = dict.fromkeys(
        (n for n in variables_of("sim") if n not in ("CONNECT_SOURCE", "CONNECT_STORE_PATH")), ""
    )
    result = cli("check", CONNECT_SOURCE="sim", CONNECT_STORE_PATH=str(tmp_path / "s.db"), **empties)
    assert result.returncode == 0, result.stderr
    assert "login: not needed" in result.stdout


def test_check_with_unicode_in_every_setting(tmp_path: Path) -> None:
    names = [n for n in variables_of("linkup") if n.startswith("CONNECT_") and n != "CONNECT_SOURCE"]
    given = {name: f"ünïcødé-{i}-✓" for i, name in enumerate(names)}
    result = cli("check", CONNECT_SOURCE="linkup", **given)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    for line in lines:
        assert LINE.match(line.removeprefix("nightscout-connect: ")), line
    for value in given.values():
        assert value not in result.stderr
