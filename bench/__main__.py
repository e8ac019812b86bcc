"""The benchmark command: every figure beside a ceiling measured in the same run.

    bash scripts/bench.sh            a table
    bash scripts/bench.sh --json     one JSON object (the same figures)

Figures are throughputs on this machine right now; the ratios to their ceilings are what to
compare between runs, since shared machines are noisy. Each figure says whether it is CPU time
(the work waits on nothing: steadier on a shared machine) or wall time (the I/O is the point).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from bench.accounts import bench_accounts
from bench.api import bench_api
from bench.backfill import bench_backfill
from bench.delivery import bench_mqtt, bench_nightscout
from bench.export import bench_export
from bench.idle import bench_idle
from bench.machines import bench_machines
from bench.many import bench_many, bench_many_databases
from bench.store import bench_store
from bench.timing import Figures

#: key, measurement, label, what the ceiling is, and whether the figure is CPU or wall time
FIGURES: tuple[tuple[str, Callable[..., Figures], str, str, str], ...] = (
    ("store", bench_store, "store upserts/s (frames of 288)", "bare loop, hand-written SQL", "cpu"),
    (
        "delivery_nightscout",
        bench_nightscout,
        "delivery to Nightscout emulator, records/s",
        "bare httpx loop: store, post, cursor",
        "wall",
    ),
    (
        "delivery_mqtt",
        bench_mqtt,
        "delivery to mosquitto, QoS 1 messages/s",
        "bare paho publisher: store, publish, cursor",
        "wall",
    ),
    ("api", bench_api, "API entries.json?count=288, requests/s", "bare ASGI app, same bytes", "wall"),
    (
        "accounts",
        bench_accounts,
        "accounts polled/s (200 daemons, one steady-state frame each)",
        "same callbacks by dict, fetch+transform+persist direct",
        "cpu",
    ),
    (
        "backfill",
        bench_backfill,
        "backfill from a Nightscout, entries/s (30 days)",
        "bare fetch+decode+transform+store loop",
        "cpu",
    ),
    ("export", bench_export, "export of 90 days (NDJSON), rows/s", "one SELECT, written at once", "wall"),
)


#: ``--quick``: every figure on a few records, to see that the benchmark runs (the figures
#: themselves mean nothing at this size)
QUICK: dict[str, dict[str, Any]] = {
    "store": {"rows": 1000},
    "delivery_nightscout": {"records": 400, "chunk_size": 200, "rounds": 1},
    "delivery_mqtt": {"messages": 100, "rounds": 1},
    "api": {"requests": 20, "days": 2},
    "accounts": {"accounts": 5, "rounds": 1},
    "backfill": {"days": 2, "rounds": 1},
    "export": {"days": 2, "rounds": 1},
    "machines": {"frames": 10},
    "idle": {"accounts": 5, "seconds": 0.5},
    "many": {"accounts": 20},
    "many_postgres": {"accounts": 20},
}


def measure(progress: Callable[[str], None], *, quick: bool = False) -> dict[str, Any]:
    """Every figure, as the JSON object ``--json`` prints (a figure that could not be measured
    is null, with the reason under ``not_measured``)."""
    sizes = QUICK if quick else {}
    figures: dict[str, Any] = {}
    not_measured: dict[str, str] = {}
    extra: dict[str, Any] = {}
    for key, fn, _label, _ceiling, clock in FIGURES:
        progress(key)
        try:
            result = fn(**sizes.get(key, {}))
        except Exception as exc:  # one missing piece (e.g. no broker) must not hide the rest
            figures[key] = None
            not_measured[key] = f"{type(exc).__name__}: {exc}"
            continue
        figures[key] = {
            "ours": result["ours"],
            "ceiling": result["ceiling"],
            "ratio": result["ratio"],
            "time": clock,
        }
        extra[key] = {k: v for k, v in result.items() if k not in ("ours", "ceiling", "ratio")}
    progress("machines")
    machines = bench_machines(**sizes.get("machines", {}))
    progress("idle")
    idle = bench_idle(**sizes.get("idle", {}))
    progress("many")
    try:
        many: dict[str, Any] | None = bench_many(**sizes.get("many", {}))
    except Exception as exc:  # e.g. too few open files allowed here: said why, the rest stays
        many = None
        not_measured["many"] = f"{type(exc).__name__}: {exc}"
    progress("many_postgres")
    many_pg: dict[str, Any] | None
    fleet: dict[str, Any] | None
    try:
        many_pg, fleet = bench_many_databases(**sizes.get("many_postgres", {}))
    except Exception as exc:  # e.g. no PostgreSQL installed: said why, the rest stays
        many_pg = fleet = None
        not_measured["many_postgres"] = not_measured["many_fleet"] = f"{type(exc).__name__}: {exc}"
    return {
        "figures": figures,
        "rss_kib_per_account": round(idle["rss_per_account"] / 1024, 1),
        "idle_cpu_percent_100_loops": round(idle["idle_cpu_percent"], 4),
        "heap_kib_per_account": round(extra.get("accounts", {}).get("bytes_per_account", 0) / 1024, 1)
        or None,
        # ``run --accounts-dir`` with 1,000 accounts (20 with --quick): wall and CPU seconds
        # until every account stored its first frame, and what each account adds to one
        "startup_seconds_1000_accounts": None if many is None else many["startup_seconds"],
        # when every account's daemon had started (its loops polling), before their first frames
        "running_seconds_1000_accounts": None if many is None else many["running_seconds"],
        "startup_cpu_seconds_1000_accounts": None if many is None else many["startup_cpu_seconds"],
        "restart_seconds_1000_accounts": None if many is None else many["restart_seconds"],
        "restart_cpu_seconds_1000_accounts": None if many is None else many["restart_cpu_seconds"],
        "rss_kib_per_account_1000": None if many is None else many["rss_kib_per_account"],
        "fds_per_account_1000": None if many is None else many["fds_per_account"],
        # the same with every account in one PostgreSQL database (one pool for the process)
        "startup_seconds_1000_accounts_postgres": None if many_pg is None else many_pg["startup_seconds"],
        "running_seconds_1000_accounts_postgres": None if many_pg is None else many_pg["running_seconds"],
        "startup_cpu_seconds_1000_accounts_postgres": None
        if many_pg is None
        else many_pg["startup_cpu_seconds"],
        "restart_seconds_1000_accounts_postgres": None if many_pg is None else many_pg["restart_seconds"],
        "restart_cpu_seconds_1000_accounts_postgres": None
        if many_pg is None
        else many_pg["restart_cpu_seconds"],
        "rss_kib_per_account_1000_postgres": None if many_pg is None else many_pg["rss_kib_per_account"],
        "fds_per_account_1000_postgres": None if many_pg is None else many_pg["fds_per_account"],
        # ``run --fleet`` over the same thousand, imported into PostgreSQL with their data there
        "startup_seconds_1000_accounts_fleet": None if fleet is None else fleet["startup_seconds"],
        "running_seconds_1000_accounts_fleet": None if fleet is None else fleet["running_seconds"],
        "startup_cpu_seconds_1000_accounts_fleet": None if fleet is None else fleet["startup_cpu_seconds"],
        "machines": {
            "events_per_frame": machines["events_per_frame"],
            "cpu_us_per_frame": round(machines["cpu_us_per_frame"], 1),
        },
        "export_peak_rss_mib": {
            "ours": round(extra.get("export", {}).get("peak_rss", 0) / 2**20, 1),
            "ceiling": round(extra.get("export", {}).get("ceiling_rss", 0) / 2**20, 1),
        },
        "not_measured": not_measured,
    }


def table(report: dict[str, Any]) -> str:
    labels = {key: (label, ceiling) for key, _fn, label, ceiling, _clock in FIGURES}
    width = max(len(label) for label, _ in labels.values())
    lines = [f"{'figure':<{width}}  {'ours':>12}  {'ceiling':>12}  {'ratio':>6}  time  ceiling is"]
    for key, result in report["figures"].items():
        label, ceiling = labels[key]
        if result is None:
            lines.append(f"{label}: not measured ({report['not_measured'][key]})")
            continue
        lines.append(
            f"{label:<{width}}  {result['ours']:>12,.0f}  {result['ceiling']:>12,.0f}  "
            f"{result['ratio']:>6.2f}  {result['time']:<4}  {ceiling}"
        )
    machines = report["machines"]
    lines += [
        "",
        f"machines: {machines['events_per_frame']} events per frame (Cycle + Fetch), "
        f"{machines['cpu_us_per_frame']:,.0f} µs CPU per frame",
        f"memory per account: {report['rss_kib_per_account']:,.0f} KiB RSS (100 daemons), "
        f"{report['heap_kib_per_account'] or 0:,.0f} KiB Python heap (200 daemons)",
        f"idle: {report['idle_cpu_percent_100_loops']:.3f} % of a core (100 waiting daemons, one status period)",
    ]
    if report["startup_seconds_1000_accounts"] is not None:
        lines.append(
            f"1,000 accounts (run --accounts-dir): every first frame stored after "
            f"{report['startup_seconds_1000_accounts']:,.1f} s ({report['startup_cpu_seconds_1000_accounts']:,.1f} s CPU), "
            f"{report['rss_kib_per_account_1000']:,.0f} KiB RSS and {report['fds_per_account_1000']:.1f} "
            "open files per account above one; restarted over those stores: "
            f"{report['restart_seconds_1000_accounts']:,.1f} s ({report['restart_cpu_seconds_1000_accounts']:,.1f} s CPU)"
        )
    else:
        lines.append(f"1,000 accounts: not measured ({report['not_measured'].get('many')})")
    if report["startup_seconds_1000_accounts_postgres"] is not None:
        lines.append(
            f"1,000 accounts in one PostgreSQL database: every first frame stored after "
            f"{report['startup_seconds_1000_accounts_postgres']:,.1f} s "
            f"({report['startup_cpu_seconds_1000_accounts_postgres']:,.1f} s CPU), "
            f"{report['rss_kib_per_account_1000_postgres']:,.0f} KiB RSS and "
            f"{report['fds_per_account_1000_postgres']:.2f} open files per account above one; restarted: "
            f"{report['restart_seconds_1000_accounts_postgres']:,.1f} s "
            f"({report['restart_cpu_seconds_1000_accounts_postgres']:,.1f} s CPU)"
        )
    else:
        lines.append(
            f"1,000 accounts in PostgreSQL: not measured ({report['not_measured'].get('many_postgres')})"
        )
    if report["startup_seconds_1000_accounts_fleet"] is not None:
        lines.append(
            "1,000 accounts leased by one run --fleet (data in PostgreSQL): every first frame stored after "
            f"{report['startup_seconds_1000_accounts_fleet']:,.1f} s "
            f"({report['startup_cpu_seconds_1000_accounts_fleet']:,.1f} s CPU)"
        )
    else:
        lines.append(f"1,000 accounts of a fleet: not measured ({report['not_measured'].get('many_fleet')})")
    peak = report["export_peak_rss_mib"]
    lines.append(
        f"export peak RSS: {peak['ours']:,.1f} MiB (every row held at once: {peak['ceiling']:,.1f} MiB)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument(
        "--quick", action="store_true", help="a few records per figure: it runs, nothing more"
    )
    args = parser.parse_args(argv)

    def progress(key: str) -> None:
        print(f"measuring {key} …", file=sys.stderr, flush=True)

    report = measure(progress, quick=args.quick)
    print(json.dumps(report) if args.json else table(report))


if __name__ == "__main__":
    main()
