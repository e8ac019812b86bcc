"""No source unless one is named: run, once, check and capture never fall back to the simulator.

Only ``demo`` reads the simulated CGM by itself. Without ``CONNECT_SOURCE`` (or ``--source``)
a run exits 2 with one line listing the sources, before anything is contacted; the variables
of exactly one other tool (``BRIDGE_USER_NAME`` …) choose its source, and two tools' variables
are a contradiction to resolve.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from connect.accounts import load_accounts
from connect.loading import UsageError, load_settings
from connect.settings import installed_legacy_env, known_sources
from tests.clirun import FOREIGN, cli
from tests.emulators.nightscout import NightscoutEmulator, serve_in_thread

SITE_SECRET = "the-real-site-secret-4c1"
NO_SOURCE = "--source / CONNECT_SOURCE: not set; name where readings come from: "


@pytest.fixture
def site() -> Iterator[tuple[NightscoutEmulator, str]]:
    emu = NightscoutEmulator(SITE_SECRET)
    url, stop = serve_in_thread(emu)
    try:
        yield emu, url
    finally:
        stop()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in [k for k in os.environ if FOREIGN.match(k)]:
        monkeypatch.delenv(key)
    return monkeypatch


def test_once_with_only_an_output_exits_2_and_sends_nothing(
    site: tuple[NightscoutEmulator, str], tmp_path: Path
) -> None:
    """The worst default there was: simulated readings uploaded to a real site."""
    emu, url = site
    db = tmp_path / "s.db"
    result = cli(
        "once", CONNECT_NIGHTSCOUT_ENDPOINT=url, CONNECT_API_SECRET=SITE_SECRET, CONNECT_STORE_PATH=str(db)
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("nightscout-connect: " + NO_SOURCE)
    for name in known_sources():
        assert name in lines[0]
    assert emu.requests == [] and emu.entries == []
    assert not db.exists()


@pytest.mark.parametrize(
    "variables",
    [
        # the site's own names, as a connector moved out of a Nightscout environment sees them
        {"BASE_URL": "{url}", "API_SECRET": SITE_SECRET},
        # a misspelt name is no name: not the simulator either
        {
            "CONECT_SOURCE": "dexcomshare",
            "CONNECT_NIGHTSCOUT_ENDPOINT": "{url}",
            "CONNECT_API_SECRET": SITE_SECRET,
        },
        {"CONNECT_SOURCE": "", "CONNECT_NIGHTSCOUT_ENDPOINT": "{url}", "CONNECT_API_SECRET": SITE_SECRET},
    ],
    ids=["site variables", "misspelt", "empty"],
)
def test_run_without_a_source_never_reaches_the_site(
    site: tuple[NightscoutEmulator, str], tmp_path: Path, variables: dict[str, str]
) -> None:
    emu, url = site
    given = {k: v.format(url=url) for k, v in variables.items()}
    result = cli("run", CONNECT_STORE_PATH=str(tmp_path / "s.db"), **given)
    assert result.returncode == 2, result.stderr
    assert NO_SOURCE in result.stderr and "Traceback" not in result.stderr
    assert emu.requests == []


def test_check_without_a_source_exits_2_and_points_at_a_typo(tmp_path: Path) -> None:
    result = cli("check", CONECT_SOURCE="sim", CONNECT_STORE_PATH=str(tmp_path / "s.db"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "nightscout-connect: " + NO_SOURCE + "dexcomshare, glooko, linkup, minimedcarelink, nightscout, "
        "sim for simulated readings, mqtt for an MQTT subscription, or none to take only pushed data"
    ]
    assert "source: none: CONNECT_SOURCE is not set" in result.stdout
    assert "CONECT_SOURCE: nothing reads it; did you mean CONNECT_SOURCE?" in result.stdout
    assert "login" not in result.stdout


def test_capture_without_a_source_exits_2(tmp_path: Path) -> None:
    result = cli("capture", str(tmp_path / "cap"))
    assert result.returncode == 2
    assert NO_SOURCE in result.stderr
    assert not (tmp_path / "cap").exists()


def test_a_missing_source_is_one_problem_among_the_others(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CONNECT_BACKFILL_DAYS", "-1")
    clean_env.setenv("CONNECT_HTTP_BIND", "nowhere")
    with pytest.raises(UsageError) as info:
        load_settings([])
    lines = info.value.lines
    assert len(lines) == 3, lines
    assert lines[0].startswith(NO_SOURCE)
    assert any(line.startswith("--backfill-days / CONNECT_BACKFILL_DAYS:") for line in lines)
    assert any(line.startswith("--http-bind / CONNECT_HTTP_BIND:") for line in lines)


def test_the_simulator_is_read_when_named(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CONNECT_HTTP_BIND", "0")
    _, source = load_settings(["--source", "sim"])
    assert source.name == "sim"
    clean_env.setenv("CONNECT_SOURCE", "sim")
    settings, source = load_settings([])
    assert source.name == "sim" and settings.source == "sim"


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"BRIDGE_USER_NAME": "publisher", "BRIDGE_PASSWORD": "bridge-password"}, "dexcomshare"),
        ({"LINK_UP_USERNAME": "follower@example.org", "LINK_UP_PASSWORD": "libre-password"}, "linkup"),
        (
            {"CARELINK_USERNAME": "carepartner", "CONNECT_CARELINK_TOKEN_FILE": "tokens.json"},
            "minimedcarelink",
        ),
        ({"GLOOKO_EMAIL": "me@example.org", "GLOOKO_PASSWORD": "glooko-password"}, "glooko"),
    ],
)
def test_one_tools_variables_choose_its_source(
    clean_env: pytest.MonkeyPatch, variables: dict[str, str], expected: str
) -> None:
    clean_env.setenv("CONNECT_HTTP_BIND", "0")
    for key, value in variables.items():
        clean_env.setenv(key, value)
    settings, source = load_settings([])
    assert source.name == expected and settings.source == expected
    # an explicit choice wins over what the names imply
    _, named = load_settings(["--source", "sim"])
    assert named.name == "sim"


def test_every_old_name_implies_its_own_source() -> None:
    owners: dict[str, str] = {}
    for name, legacy in installed_legacy_env().items():
        for old in legacy:
            assert owners.setdefault(old, name) == name, f"{old} names two sources"


def test_two_tools_variables_exit_2_naming_both(tmp_path: Path) -> None:
    result = cli(
        "check", BRIDGE_USER_NAME="publisher", LINK_UP_USERNAME="follower@example.org",
        LINK_UP_PASSWORD="libre-password", CONNECT_STORE_PATH=str(tmp_path / "s.db"),
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "CONNECT_SOURCE: not set" in line
    assert "BRIDGE_USER_NAME (dexcomshare)" in line
    assert "LINK_UP_PASSWORD LINK_UP_USERNAME (linkup)" in line
    assert "libre-password" not in result.stdout + result.stderr


def test_check_says_which_variables_chose_the_source(tmp_path: Path) -> None:
    result = cli(
        "check", CARELINK_USERNAME="carepartner", CONNECT_CARELINK_TOKEN_FILE=str(tmp_path / "tokens.json"),
        CONNECT_CARELINK_SERVER="http://127.0.0.1:9",  # nothing leaves this machine
    )  # fmt: skip
    assert result.returncode == 1  # the login fails: there are no tokens yet
    assert "source: minimedcarelink" in result.stdout
    assert "(chosen by CARELINK_USERNAME: CONNECT_SOURCE is not set)" in result.stdout


def test_an_account_file_without_a_source_is_refused(tmp_path: Path) -> None:
    (tmp_path / "alice.env").write_text("CONNECT_SOURCE=sim\n")
    (tmp_path / "bob.env").write_text("CONNECT_BACKFILL_DAYS=2\n")
    # a file with a problem keeps only its own account from starting (strict: every account)
    assert [r.name for r in load_accounts(tmp_path, []).refused] == ["bob"]
    with pytest.raises(UsageError) as info:
        load_accounts(tmp_path, [], strict=True)
    assert info.value.lines == [
        "bob.env: " + NO_SOURCE + "dexcomshare, glooko, linkup, minimedcarelink, nightscout, "
        "sim for simulated readings, mqtt for an MQTT subscription, or none to take only pushed data"
    ]
