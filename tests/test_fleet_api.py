"""``serve --fleet``: every account of one PostgreSQL database under ``/a/{account}/``, each behind
its own secret, and the operator's ``/api/connect/fleet`` behind the operator's.

Two simulated accounts store a day of readings each with ``once``; their settings are imported
with ``accounts import``; the API is then read as the accounts' followers and the operator would
read it (in process, and once as the real command on a port).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio
from pydantic import SecretStr

from connect.fleet_api import build_fleet_app
from store.fleet import FleetStore
from store.postgres import open_pool
from tests.clirun import cli_in_process
from tests.logcapture import captured_logs
from tests.mosquitto import free_port

ROOT = Path(__file__).resolve().parent.parent
ALICE = "alice-follower-secret-71c3"
BOB = "bob-follower-secret-0e9a4"
OPERATOR = "operator-fleet-secret-5d2b"
SECRETS = (ALICE, BOB, OPERATOR)


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


cli = cli_in_process


def write(directory: Path, name: str, **settings: str) -> None:
    lines = [f"# {name}", "CONNECT_SOURCE=sim"] + [f"{key}={value}" for key, value in settings.items()]
    (directory / f"{name}.env").write_text("\n".join(lines) + "\n")


def populate(url: str, tmp_path: Path) -> Path:
    """alice and bob with a day of readings each (different ones), plus carol (no secret) and
    dave (no secret, reading switched on), imported into the database."""
    for account, seed in (("alice", "1"), ("bob", "7")):
        # a device of its own: identical records would carry the same identifiers
        filled = cli(
            "once", CONNECT_SOURCE="sim", CONNECT_STORE_URL=url, CONNECT_ACCOUNT=account,
            CONNECT_SIM_SEED=seed, CONNECT_SIM_DEVICE=f"{account}-cgm", CONNECT_BACKFILL_DAYS="1",
            CONNECT_HTTP_BIND="0",
        )  # fmt: skip
        assert filled.returncode == 0, filled.stderr[-3000:]
    accounts = tmp_path / "accounts"
    accounts.mkdir()
    write(accounts, "alice", CONNECT_SIM_SEED="1", CONNECT_HTTP_SECRET=ALICE)
    write(accounts, "bob", CONNECT_SIM_SEED="7", CONNECT_HTTP_SECRET=BOB)
    write(accounts, "carol")
    write(accounts, "dave", CONNECT_HTTP_READABLE="true")
    imported = cli("accounts", "import", str(accounts), CONNECT_STORE_URL=url)
    assert imported.returncode == 0, imported.stderr
    return accounts


@pytest.fixture
def populated(postgres_url: str, tmp_path: Path) -> Path:
    """The database of :func:`populate` (a plain fixture: the commands run trio themselves)."""
    return populate(postgres_url, tmp_path)


def stored(url: str, account: str, collection: str = "entries") -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            f"SELECT identifier FROM {collection} WHERE account = %s".encode(),  # type: ignore[arg-type]
            (account,),
        ).fetchall()
    return sorted(str(i) for (i,) in rows)


@contextlib.asynccontextmanager
async def fleet_client(
    url: str, *, loopback: bool = True, refresh_s: float = 5.0
) -> AsyncIterator[httpx.AsyncClient]:
    db = FleetStore.open(url)
    pool = open_pool(url)
    try:
        app, _ = build_fleet_app(
            db, pool, url, operator_secret=SecretStr(OPERATOR), loopback=loopback, refresh_s=refresh_s
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fleet") as client:
            yield client
    finally:
        pool.close()
        db.close()


def no_secret_in(responses: Iterable[httpx.Response]) -> None:
    for response in responses:
        text = response.text + json.dumps(dict(response.headers))
        for secret in SECRETS:
            assert secret not in text and sha1(secret) not in text, response.request.url.path


async def test_each_account_reads_its_own_records_with_its_own_secret_only(
    postgres_url: str, populated: Path
) -> None:
    seen: list[httpx.Response] = []
    with captured_logs() as logs:
        async with fleet_client(postgres_url) as client:

            async def get(path: str, **kwargs: Any) -> httpx.Response:
                response = await client.get(path, **kwargs)
                seen.append(response)
                return response

            entries = "/api/v1/entries.json"
            everything = {"count": "1000"}
            # each account's records, with its own secret in each form the single-account API takes
            mine = await get(f"/a/alice{entries}", params=everything, headers={"api-secret": sha1(ALICE)})
            assert mine.status_code == 200
            assert sorted(d["identifier"] for d in mine.json()) == stored(postgres_url, "alice")
            by_token = await get(f"/a/alice{entries}", params={**everything, "token": ALICE})
            assert by_token.json() == mine.json()
            by_bearer = await get(
                f"/a/alice{entries}", params=everything, headers={"authorization": f"Bearer {ALICE}"}
            )
            assert by_bearer.json() == mine.json()
            bobs = await get(f"/a/bob{entries}", params={**everything, "secret": sha1(BOB)})
            assert bobs.status_code == 200
            assert sorted(d["identifier"] for d in bobs.json()) == stored(postgres_url, "bob")
            assert {d["device"] for d in mine.json()} == {"alice-cgm"}
            assert {d["device"] for d in bobs.json()} == {"bob-cgm"}

            # every read the single-account API serves, under the prefix
            for path in (
                "/api/v1/treatments.json", "/api/v1/devicestatus.json", "/api/v1/profile.json",
                "/api/v1/status.json", "/api/v1/entries/current.json", "/api/connect/status", "/api/v3/entries",
            ):  # fmt: skip
                response = await get(
                    f"/a/alice{path}", headers={"api-secret": sha1(ALICE), "authorization": f"Bearer {ALICE}"}
                )
                assert response.status_code == 200, (path, response.text)
            treatments = await get(
                "/a/alice/api/v1/treatments.json", params={"count": "1000", "token": ALICE}
            )
            assert sorted(d["identifier"] for d in treatments.json()) == stored(
                postgres_url, "alice", "treatments"
            )

            # one account's secret never opens another's records, in any form
            for headers, params in (
                ({"api-secret": sha1(ALICE)}, {}),
                ({}, {"token": ALICE}),
                ({}, {"secret": sha1(ALICE)}),
                ({"authorization": f"Bearer {ALICE}"}, {}),
            ):
                refused = await get(f"/a/bob{entries}", headers=headers, params=params)
                assert refused.status_code == 401, refused.text
            assert (await get(f"/a/alice{entries}", params={"token": BOB})).status_code == 401
            # nor does a token issued for it, nor the operator's secret
            issued = await get(f"/a/alice/api/v2/authorization/request/{ALICE}")
            assert issued.status_code == 200
            jwt = issued.json()["token"]
            assert (await get(f"/a/alice{entries}", params={"token": jwt})).status_code == 200
            assert (await get(f"/a/bob{entries}", params={"token": jwt})).status_code == 401
            assert (
                await get(f"/a/alice{entries}", headers={"api-secret": sha1(OPERATOR)})
            ).status_code == 401
            assert (await get(f"/a/alice{entries}")).status_code == 401
            # the pages too
            assert (await get("/a/bob/", params={"token": ALICE})).status_code == 401

            # an account without a secret is not read by anybody; reading switched on in its
            # settings opens it on a loopback address
            assert (await get(f"/a/carol{entries}")).status_code == 401
            assert (await get(f"/a/carol{entries}", params={"token": ALICE})).status_code == 401
            assert (await get(f"/a/dave{entries}")).status_code == 200

            # unknown accounts, and addresses outside any account
            for path in (f"/a/nobody{entries}", "/a/nobody/", "/", "/api/v1/entries.json"):
                assert (await get(path, headers={"api-secret": sha1(ALICE)})).status_code == 404, path

            # the operator's table: the operator's secret only
            assert (await get("/api/connect/fleet")).status_code == 401
            assert (await get("/api/connect/fleet", headers={"api-secret": sha1(ALICE)})).status_code == 401
            assert (await get("/api/connect/fleet", params={"token": "x" * 20})).status_code == 401
            table = await get("/api/connect/fleet", headers={"api-secret": sha1(OPERATOR)})
            assert table.status_code == 200
            command = cli("fleet", "--json", CONNECT_STORE_URL=postgres_url)
            assert table.json() == json.loads(command.stdout)
            assert [row["account"] for row in table.json()] == ["alice", "bob", "carol", "dave"]
            assert (await get("/api/connect/fleet", params={"token": OPERATOR})).json() == table.json()

        # served off loopback, reading without a secret stays off whatever the settings say
        async with fleet_client(postgres_url, loopback=False) as public:
            response = await public.get(f"/a/dave{entries}")
            seen.append(response)
            assert response.status_code == 401
            assert "loopback" in response.json()["description"]
    no_secret_in(seen)
    for secret in SECRETS:
        assert secret not in logs.getvalue()


async def test_the_status_page_renders_under_the_prefix_with_working_range_links(
    postgres_url: str, populated: Path
) -> None:
    async with fleet_client(postgres_url) as client:
        page = await client.get("/a/alice/", params={"token": ALICE})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert ALICE not in page.text
        links = re.findall(r'<a href="([^"]+)">(\d+) h</a>', page.text)
        assert [hours for _, hours in links] == ["3", "6", "12"]
        for href, hours in links:
            # a browser resolves each link against the page's own address
            target = httpx.URL("http://fleet/a/alice/?token=x").join(href.replace("&amp;", "&"))
            assert target.path == "/a/alice/"
            followed = await client.get(target)
            assert followed.status_code == 200, followed.text
            assert f'<strong aria-current="page">{hours} h</strong>' in followed.text
        # the address without its last slash reaches the same page
        bare = await client.get("/a/alice", params={"token": ALICE}, follow_redirects=True)
        assert bare.status_code == 200 and bare.url.path == "/a/alice/"
        # without the secret: a page that says how to open this very page
        closed = await client.get("/a/alice/")
        assert closed.status_code == 401 and "<code>/a/alice/?token=" in closed.text
        # the page of another account with this token: refused
        assert (await client.get("/a/bob/", params={"token": ALICE})).status_code == 401


async def test_accounts_added_and_removed_are_served_and_refused_without_a_restart(
    postgres_url: str, populated: Path
) -> None:
    accounts = populated
    async with fleet_client(postgres_url, refresh_s=0) as client:
        assert (await client.get("/a/bob/api/v1/entries.json", params={"token": BOB})).status_code == 200
        assert cli("accounts", "remove", "bob", CONNECT_STORE_URL=postgres_url).returncode == 0
        assert (await client.get("/a/bob/api/v1/entries.json", params={"token": BOB})).status_code == 404
        # back, with another secret: the old one no longer opens it
        new_secret = "bob-new-follower-secret-aa"
        (accounts / "bob.env").write_text(f"CONNECT_SOURCE=sim\nCONNECT_HTTP_SECRET={new_secret}\n")
        assert cli("accounts", "import", str(accounts), CONNECT_STORE_URL=postgres_url).returncode == 0
        assert (await client.get("/a/bob/api/v1/entries.json", params={"token": BOB})).status_code == 401
        again = await client.get("/a/bob/api/v1/entries.json", params={"token": new_secret})
        assert again.status_code == 200 and again.json()
        # changed in place: the next request reads the new settings
        third = "bob-third-follower-secret-7"
        (accounts / "bob.env").write_text(f"CONNECT_SOURCE=sim\nCONNECT_HTTP_SECRET={third}\n")
        assert cli("accounts", "import", str(accounts), CONNECT_STORE_URL=postgres_url).returncode == 0
        assert (
            await client.get("/a/bob/api/v1/entries.json", params={"token": new_secret})
        ).status_code == 401
        assert (await client.get("/a/bob/api/v1/entries.json", params={"token": third})).status_code == 200


def test_settings_of_serve_fleet_are_checked_at_once_without_echoing_values(postgres_url: str) -> None:
    short = "short-op"
    public = cli("serve", "--fleet", "--http-bind", "0.0.0.0:1338", CONNECT_STORE_URL=postgres_url)
    assert public.returncode == 2
    assert "CONNECT_FLEET_OPERATOR_SECRET" in public.stderr
    problems = cli(
        "serve", "--fleet", CONNECT_STORE_URL=postgres_url, CONNECT_FLEET_OPERATOR_SECRET=short,
        CONNECT_HTTP_SECRET=ALICE, CONNECT_HTTP_BIND="nonsense",
    )  # fmt: skip
    assert problems.returncode == 2
    lines = problems.stderr.strip().splitlines()
    assert len(lines) == 3, problems.stderr
    assert short not in problems.stderr and ALICE not in problems.stderr
    assert cli("serve", "--fleet").returncode == 2  # no database named


def test_serve_fleet_on_a_port(postgres_url: str, tmp_path: Path) -> None:
    populate(postgres_url, tmp_path)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    env.update({
        "CONNECT_LOG_FORMAT": "json", "CONNECT_LOG_LEVEL": "debug", "CONNECT_STORE_URL": postgres_url,
        "CONNECT_FLEET_OPERATOR_SECRET": OPERATOR, "CONNECT_HTTP_BIND": f"127.0.0.1:{port}",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    })  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "connect", "serve", "--fleet"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    responses: list[httpx.Response] = []
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "serve --fleet did not answer"
            time.sleep(0.05)
        mine = httpx.get(
            f"{base}/a/alice/api/v1/entries.json", params={"count": "1000"},
            headers={"api-secret": sha1(ALICE)}, timeout=10,
        )  # fmt: skip
        responses.append(mine)
        assert mine.status_code == 200
        assert sorted(d["identifier"] for d in mine.json()) == stored(postgres_url, "alice")
        for response in (
            httpx.get(f"{base}/a/bob/api/v1/entries.json", params={"token": ALICE}, timeout=10),
            httpx.get(f"{base}/api/connect/fleet", params={"token": ALICE}, timeout=10),
        ):
            responses.append(response)
            assert response.status_code == 401
        page = httpx.get(f"{base}/a/bob/", params={"token": BOB}, timeout=10)
        responses.append(page)
        assert page.status_code == 200
        table = httpx.get(f"{base}/api/connect/fleet", headers={"api-secret": sha1(OPERATOR)}, timeout=10)
        responses.append(table)
        assert [row["account"] for row in table.json()] == ["alice", "bob", "carol", "dave"]
        missing = httpx.get(f"{base}/a/nobody/api/v1/entries.json", params={"token": ALICE}, timeout=10)
        assert missing.status_code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    assert '"serving the fleet"' in err or "serving the fleet" in err
    no_secret_in(responses)
    for secret in SECRETS:
        assert secret not in out + err and sha1(secret) not in out + err


@pytest.mark.parametrize("bind", ["0.0.0.0:1338", "192.0.2.1:80"])
def test_a_public_address_needs_the_operator_secret(bind: str) -> None:
    from connect.fleet_api import fleet_api_settings
    from connect.loading import UsageError

    with pytest.raises(UsageError) as refused:
        fleet_api_settings(["--http-bind", bind], {"CONNECT_STORE_URL": "postgresql://u@h/db"})
    assert any("CONNECT_FLEET_OPERATOR_SECRET" in line for line in refused.value.lines)
    settings = fleet_api_settings(
        ["--http-bind", bind],
        {"CONNECT_STORE_URL": "postgresql://u@h/db", "CONNECT_FLEET_OPERATOR_SECRET": OPERATOR},
    )
    assert not settings.loopback and OPERATOR not in repr(settings)


async def test_an_account_that_cannot_be_served_is_a_clear_refusal_never_a_crash(postgres_url: str) -> None:
    with FleetStore.open(postgres_url) as db:
        db.upsert_account("alice", f"CONNECT_SOURCE=sim\nCONNECT_HTTP_SECRET={ALICE}\n")
        # a file `accounts import` would refuse, stored behind its back
        db.upsert_account(
            "broken", f"CONNECT_SOURCE=sim\nCONNECT_HTTP_SECRET={BOB}\nCONNECT_BACKFILL_DAYS=lots\n"
        )
    async with fleet_client(postgres_url, refresh_s=0) as client:
        # no daemon has written the database yet: nothing to read, and said so
        early = await client.get("/a/alice/api/v1/entries.json", params={"token": ALICE})
        assert early.status_code == 503 and "no daemon" in early.json()["description"]
        broken = await client.get("/a/broken/api/v1/entries.json", params={"token": BOB})
        assert broken.status_code == 503 and "settings" in broken.json()["description"]
        assert "lots" not in broken.text and BOB not in broken.text
    # once a daemon has written it, the same server reads it
    # (a command of its own trio run, so in a thread of its own)
    env = {
        "CONNECT_SOURCE": "sim",
        "CONNECT_STORE_URL": postgres_url,
        "CONNECT_ACCOUNT": "alice",
        "CONNECT_HTTP_BIND": "0",
    }
    filled = await trio.to_thread.run_sync(lambda: cli("once", CONNECT_BACKFILL_DAYS="1", **env))
    assert filled.returncode == 0, filled.stderr[-3000:]
    async with fleet_client(postgres_url, refresh_s=0) as client:
        ready = await client.get("/a/alice/api/v1/entries.json", params={"token": ALICE})
        assert ready.status_code == 200 and ready.json()
