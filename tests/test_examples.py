"""The examples stay runnable: the env files are valid settings, the embedding example polls
several accounts in one process, each into its own store."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from connect.cli import load_settings
from connect.loading import UsageError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def read_env(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.env")))
def test_example_env_files_are_valid_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = read_env(EXAMPLES / name)
    assert env["CONNECT_SOURCE"] != "sim"
    for key in [k for k in os.environ if k.startswith("CONNECT_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings, source = load_settings([])
    assert source.name == env["CONNECT_SOURCE"]
    # every variable in the file landed in a setting
    dumped = {k.upper() for k in settings.model_dump()}
    for key in env:
        assert key.removeprefix("CONNECT_") in dumped, key


def test_one_process_polls_many_accounts_each_into_its_own_store(tmp_path: Path) -> None:
    names = ["alice", "bob", "carol"]
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "embed_many_accounts.py"),
            "--accounts",
            ",".join(names),
            "--seconds",
            "4",
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    series = {}
    for name in names:
        with sqlite3.connect(tmp_path / f"{name}.db") as conn:
            devices = {d for (d,) in conn.execute("SELECT DISTINCT device FROM entries")}
            series[name] = [s for (s,) in conn.execute("SELECT sgv FROM entries ORDER BY date")]
            (status,) = conn.execute("SELECT json FROM machine_status WHERE key = 'daemon'").fetchone()
        assert devices == {f"{name}-cgm"}
        assert len(series[name]) >= 288, "a two-day backfill per account"
        assert f'"sim:{name}"' in status
    # different seeds: the accounts are not copies of each other
    assert series["alice"] != series["bob"] != series["carol"]


# --- deployment: compose, Docker, cron, systemd ---------------------------------------------------

ROOT = EXAMPLES.parent
INSTALLED = "/opt/nightscout-connect/bin/nightscout-connect"


def test_compose_runs_the_daemon_beside_mosquitto_with_volumes() -> None:
    text = (EXAMPLES / "compose.yaml").read_text()
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(text)
    daemon, broker = doc["services"]["nightscout-connect"], doc["services"]["mosquitto"]
    assert daemon["build"]["dockerfile"] == "examples/Dockerfile"
    assert (EXAMPLES / daemon["build"]["context"] / daemon["build"]["dockerfile"]).is_file()
    assert daemon["environment"]["CONNECT_MQTT_URL"] == "mqtt://mosquitto:1883"
    assert "1338:1338" in daemon["ports"]
    assert any(v.split(":")[1] == "/data" for v in daemon["volumes"])  # the store outlives the container
    assert set(doc["volumes"]) >= {v.split(":")[0] for v in daemon["volumes"]}
    conf = next(v for v in broker["volumes"] if v.endswith("mosquitto.conf:ro"))
    assert (EXAMPLES / conf.split(":")[0]).is_file()
    assert "mosquitto" in daemon["depends_on"]


#: the settings a fleet process reads from its own environment (its accounts' are in the database)
FLEET_ENV = {
    "CONNECT_STORE_URL",
    "CONNECT_FLEET_LEASE_SECONDS",
    "CONNECT_FLEET_MAX_ACCOUNTS",
    "CONNECT_FLEET_STORE_DIR",
    "CONNECT_LOG_FORMAT",
    "CONNECT_LOG_LEVEL",
}


def check_fleet_env(env: dict[str, str], tmp_path: Path) -> None:
    """Every variable is one a fleet process reads, and together they are valid settings."""
    from connect.fleet import fleet_settings

    assert set(env) <= FLEET_ENV, set(env) - FLEET_ENV
    settings, rest = fleet_settings([], env)
    assert rest == []
    assert settings.lease_s == float(env.get("CONNECT_FLEET_LEASE_SECONDS", 60))


def settings_store_dir(env: dict[str, str], tmp_path: Path) -> Path | None:
    """Where a fleet with these settings keeps its accounts' SQLite files (None: in the database)."""
    from connect.fleet import fleet_settings

    return fleet_settings([], env)[0].store_dir


def test_compose_runs_two_fleet_replicas_over_postgres_beside_mosquitto(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((EXAMPLES / "compose.yaml").read_text())
    services = doc["services"]
    fleet, postgres = services["fleet"], services["postgres"]
    # the single daemon still starts alone by default; the fleet is a profile of its own
    assert "profiles" not in services["nightscout-connect"] and "profiles" not in services["mosquitto"]
    assert fleet["profiles"] == postgres["profiles"] == ["fleet"]
    assert fleet["command"] == ["run", "--fleet"]
    assert fleet["deploy"]["replicas"] == 2
    assert fleet["build"] == services["nightscout-connect"]["build"]
    env = {k: str(v) for k, v in fleet["environment"].items()}
    url = env["CONNECT_STORE_URL"]
    assert url.startswith("postgresql://connect:") and url.endswith("@postgres:5432/connect")
    assert postgres["environment"]["POSTGRES_USER"] == "connect"
    assert postgres["environment"]["POSTGRES_DB"] == "connect"
    check_fleet_env({**env, "CONNECT_STORE_URL": "postgresql://connect@postgres:5432/connect"}, tmp_path)
    assert fleet["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert "mosquitto" in fleet["depends_on"]
    # the replicas keep nothing of their own: every account's data is in the database
    assert "CONNECT_FLEET_STORE_DIR" not in env and "volumes" not in fleet
    assert settings_store_dir(env, tmp_path) is None
    assert {v.split(":")[0] for v in postgres["volumes"]} <= set(doc["volumes"])


def test_compose_serves_the_fleet_on_one_address_behind_the_operator_secret() -> None:
    from connect.fleet_api import fleet_api_settings

    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((EXAMPLES / "compose.yaml").read_text())
    api, fleet = doc["services"]["fleet-api"], doc["services"]["fleet"]
    assert api["profiles"] == ["fleet"] and api["command"] == ["serve", "--fleet"]
    assert api["build"] == fleet["build"]
    env = {k: str(v) for k, v in api["environment"].items()}
    assert env["CONNECT_STORE_URL"] == fleet["environment"]["CONNECT_STORE_URL"]
    assert env["CONNECT_FLEET_OPERATOR_SECRET"].startswith("${CONNECT_FLEET_OPERATOR_SECRET:?")
    # as the image starts it: every address, which the operator's secret must protect
    settings = fleet_api_settings(
        [],
        {**env, "CONNECT_HTTP_BIND": "0.0.0.0:1338", "CONNECT_STORE_URL": "postgresql://connect@postgres/connect",
         "CONNECT_FLEET_OPERATOR_SECRET": "an-operator-secret-of-20"},
    )  # fmt: skip
    assert not settings.loopback
    assert any(port.endswith(":1338") for port in api["ports"])
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_kubernetes_example_runs_replicas_of_the_fleet_from_a_secret(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    docs = {
        (d["kind"], d["metadata"]["name"]): d
        for d in yaml.safe_load_all((EXAMPLES / "kubernetes.yaml").read_text())
    }
    assert {kind for kind, _ in docs} == {"Secret", "Job", "Deployment", "Service"}
    secret = docs["Secret", "nightscout-connect"]
    job = docs["Job", "nightscout-connect-import"]
    deployment = docs["Deployment", "nightscout-connect"]
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["run", "--fleet"]
    assert (
        deployment["spec"]["selector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    # the database's address (with its password) comes from the Secret, never the manifest's env
    assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    env = {e["name"]: e["value"] for e in container["env"]}
    check_fleet_env({**env, **secret["stringData"]}, tmp_path)
    # no volume: every account's data is in the database the Secret names
    assert "volumeMounts" not in container and "volumes" not in pod
    assert settings_store_dir({**env, **secret["stringData"]}, tmp_path) is None
    # the import job reads the accounts' NAME.env files from a Secret of their own
    (importer,) = job["spec"]["template"]["spec"]["containers"]
    assert importer["args"][:2] == ["accounts", "import"]
    assert importer["volumeMounts"][0]["mountPath"] == importer["args"][2]
    assert importer["envFrom"] == container["envFrom"]


def test_the_kubernetes_example_serves_the_fleet_behind_the_operator_secret() -> None:
    from connect.fleet_api import OPERATOR_ENV, fleet_api_settings

    yaml = pytest.importorskip("yaml")
    docs = {
        (d["kind"], d["metadata"]["name"]): d
        for d in yaml.safe_load_all((EXAMPLES / "kubernetes.yaml").read_text())
    }
    api, service = docs["Deployment", "nightscout-connect-api"], docs["Service", "nightscout-connect-api"]
    pod = api["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["serve", "--fleet"]
    assert (
        api["spec"]["selector"]["matchLabels"].items()
        <= api["spec"]["template"]["metadata"]["labels"].items()
    )
    # the database from the fleet's Secret, the operator's secret from one of its own: no secret
    # in the manifest's env
    refs = [source["secretRef"]["name"] for source in container["envFrom"]]
    assert refs[0] == "nightscout-connect"
    secrets: dict[str, str] = {}
    for name in refs:
        secrets.update(docs["Secret", name]["stringData"])
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    assert not set(env) & {"CONNECT_STORE_URL", OPERATOR_ENV}
    # as the image starts it, on every address: valid only because the operator's secret is set
    started = {**secrets, **env, "CONNECT_HTTP_BIND": "0.0.0.0:1338"}
    settings = fleet_api_settings([], started)
    assert not settings.loopback and settings.operator_secret is not None
    without = {k: v for k, v in started.items() if k != OPERATOR_ENV}
    with pytest.raises(UsageError):
        fleet_api_settings([], without)
    # the Service reaches the pods the Deployment makes, on the port the image listens on
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    (port,) = container["ports"]
    assert port["containerPort"] == 1338
    assert service["spec"]["ports"][0]["targetPort"] in (port["name"], 1338)


def dockerfile_json(instruction: str) -> list[str]:
    """The exec-form array of a Dockerfile instruction (continuation lines joined)."""
    import json

    text = (EXAMPLES / "Dockerfile").read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith(instruction + " ")]
    return list(json.loads(line[line.index("[") :]))


def test_the_image_binds_every_address_and_honours_port(tmp_path: Path) -> None:
    fake = tmp_path / "nightscout-connect"
    fake.write_text('#!/bin/sh\necho "$CONNECT_HTTP_BIND $*"\n')
    fake.chmod(0o755)
    entry = dockerfile_json("ENTRYPOINT")
    base = {"PATH": f"{tmp_path}:/usr/bin:/bin"}

    def started(**env: str) -> str:
        out = subprocess.run([*entry, "run"], env={**base, **env}, capture_output=True, text=True, check=True)
        return out.stdout.strip()

    assert started() == "0.0.0.0:1338 run"
    assert started(PORT="8080") == "0.0.0.0:8080 run"
    assert started(CONNECT_HTTP_BIND="0") == "0 run"  # the API turned off stays off


def test_the_healthcheck_asks_healthz_with_python_alone(tmp_path: Path) -> None:
    import socket
    import time

    check = dockerfile_json("HEALTHCHECK --interval=60s --timeout=10s --start-period=30s --retries=3")
    assert check[0] == "python" and "/healthz" in check[-1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    env.update(PYTHONPATH=str(ROOT), CONNECT_STORE_PATH=str(tmp_path / "demo.db"), CONNECT_LOG_FORMAT="json")
    probe = [sys.executable, *check[1:]]
    down = subprocess.run(probe, env={**env, "PORT": str(port)}, capture_output=True, timeout=30)
    assert down.returncode != 0  # nothing listens yet: unhealthy
    daemon = subprocess.Popen(
        [sys.executable, "-m", "connect", "demo"],
        env={**env, "CONNECT_HTTP_BIND": f"127.0.0.1:{port}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            up = subprocess.run(probe, env={**env, "PORT": str(port)}, capture_output=True, timeout=30)
            if up.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert up.returncode == 0, up.stderr
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


def test_the_cron_line_works_with_crons_path_and_reads_the_env_file_itself(tmp_path: Path) -> None:
    import shlex
    import time

    from tests.emulators.dexcom import ShareEmulator
    from tests.emulators.nightscout import NightscoutEmulator
    from tests.emulators.nightscout import serve_in_thread as serve_site
    from tests.emulators.serve import serve_in_thread

    (line,) = [ln for ln in (EXAMPLES / "cron.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    command = line.split(None, 5)[5]
    assert command.startswith(INSTALLED + " ")  # cron's PATH has no venv: the full path
    password = "pa$$word with $HOME and 'quotes'"
    secret = "site secret $API_SECRET x"
    emu = ShareEmulator()
    account = emu.add_account("cron.user", password, first_reading_ms=int(time.time() * 1000) - 3_600_000)
    site = NightscoutEmulator(secret)
    site_url, stop = serve_site(site)
    try:
        with serve_in_thread(emu) as share_url:
            env_file = tmp_path / "nightscout-connect.env"
            env_file.write_text(
                "CONNECT_SOURCE=dexcomshare\n"
                "CONNECT_SHARE_ACCOUNT_NAME=cron.user\n"
                f"CONNECT_SHARE_PASSWORD={password}\n"
                f"CONNECT_SHARE_SERVER={share_url}\n"
                f"CONNECT_NIGHTSCOUT_ENDPOINT={site_url}\n"
                f"CONNECT_API_SECRET={secret}\n"
                "CONNECT_SHARE_REGION=us # or ous\n"
                f"CONNECT_STORE_PATH={tmp_path / 'cron.db'}\n"
            )
            log = tmp_path / "cron.log"
            runnable = (
                command.replace(INSTALLED, f"{shlex.quote(sys.executable)} -m connect")
                .replace("/etc/nightscout-connect.env", str(env_file))
                .replace("/var/log/nightscout-connect.log", str(log))
            )
            # cron's environment: a short PATH, no settings of ours
            result = subprocess.run(
                ["/bin/sh", "-c", runnable],
                env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)},
                cwd=tmp_path,
                timeout=120,
            )
    finally:
        stop()
    assert result.returncode == 0, log.read_text()
    assert emu.served(account), "the password did not arrive intact"
    assert len(site.entries) >= 11  # and the site's secret did too
    assert password not in log.read_text()


def test_the_systemd_unit_names_the_installed_command_and_verifies(tmp_path: Path) -> None:
    import shutil

    unit = (EXAMPLES / "nightscout-connect.service").read_text()
    assert f"ExecStart={INSTALLED} run" in unit
    assert "LimitNOFILE=" in unit
    readme = (ROOT / "README.md").read_text()
    assert "python3 -m venv /opt/nightscout-connect" in readme  # the install steps make the path
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    fake = tmp_path / "nightscout-connect"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    copy = tmp_path / "nightscout-connect.service"
    copy.write_text(unit.replace(INSTALLED, str(fake)))
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert verified.returncode == 0, verified.stderr
    assert "nightscout-connect.service" not in verified.stderr, verified.stderr


def test_an_env_file_is_read_without_a_shell_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connect.cli import read_env_file
    from connect.loading import UsageError

    env_file = tmp_path / "a.env"
    env_file.write_text(
        "CONNECT_SHARE_PASSWORD=a $b `c` d\nCONNECT_SHARE_REGION=us # or ous\nCONNECT_ACCOUNT=file\n"
    )
    monkeypatch.setenv("CONNECT_ACCOUNT", "environment")
    for name in ("CONNECT_SHARE_PASSWORD", "CONNECT_SHARE_REGION", "CONNECT_ENV_FILE"):
        monkeypatch.setenv(name, "restored afterwards")
        monkeypatch.delenv(name)
    assert read_env_file(["--env-file", str(env_file), "--source", "x"]) == ["--source", "x"]
    assert os.environ["CONNECT_SHARE_PASSWORD"] == "a $b `c` d"
    assert os.environ["CONNECT_SHARE_REGION"] == "us"  # a comment is a comment
    assert os.environ["CONNECT_ACCOUNT"] == "environment"
    monkeypatch.delenv("CONNECT_SHARE_PASSWORD")
    monkeypatch.setenv("CONNECT_ENV_FILE", str(env_file))
    assert read_env_file([]) == []
    assert os.environ["CONNECT_SHARE_PASSWORD"] == "a $b `c` d"
    with pytest.raises(UsageError, match="--env-file: no file at"):
        read_env_file(["--env-file", str(tmp_path / "missing.env")])
