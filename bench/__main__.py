"""The benchmark command: every figure beside a ceiling measured in the same run.

    bash scripts/bench.sh        (or: python -m bench)

Figures are throughputs on this machine right now; the ratios to their ceilings are what to
compare between runs, since shared machines are noisy.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.accounts import bench_accounts
from bench.api import bench_api
from bench.backfill import bench_backfill
from bench.delivery import bench_mqtt, bench_nightscout
from bench.export import bench_export
from bench.machines import bench_machines
from bench.store import bench_store
from bench.timing import Figures

#: the figures that need more than this process (a broker, a server, the network stack), with
#: their label and what their ceiling is; one that fails is reported and the table goes on
FIGURES: tuple[tuple[Callable[[], Figures], str, str], ...] = (
    (bench_nightscout, "delivery to Nightscout emulator, records/s", "bare httpx loop"),
    (bench_mqtt, "delivery to mosquitto, QoS 1 messages/s", "bare paho publisher"),
    (bench_api, "API entries.json?count=288, requests/s", "bare ASGI app, same bytes"),
    (
        bench_accounts,
        "accounts polled/s (200 daemons, one frame each)",
        "fetch+transform+persist direct",
    ),
    (
        bench_backfill,
        "backfill from a Nightscout, entries/s (30 days)",
        "bare httpx loop, same windows",
    ),
    (bench_export, "export of 90 days (NDJSON), rows/s", "one SELECT, written at once"),
)


def main() -> None:
    rows: list[tuple[str, str, Figures]] = [
        ("machine events/s (Cycle + Fetch)", "bare transition table", bench_machines()),
        ("store upserts/s (frames of 288)", "raw sqlite3.executemany", bench_store()),
    ]
    for fn, label, ceiling in FIGURES:
        try:
            rows.append((label, ceiling, fn()))
        except Exception as exc:  # one missing piece (e.g. no broker) must not hide the rest
            print(f"{label}: not measured ({type(exc).__name__}: {exc})")
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'ours':>12}  {'ceiling':>12}  {'ratio':>6}  ceiling is")
    for label, ceiling, result in rows:
        print(
            f"{label:<{width}}  {result['ours']:>12,.0f}  {result['ceiling']:>12,.0f}  "
            f"{result['ratio']:>6.2g}  {ceiling}"
        )
        if "bytes_per_account" in result:
            print(
                f"{'  memory per account, KiB':<{width}}  {result['bytes_per_account'] / 1024:>12,.1f}  "
                f"{result['ceiling_bytes'] / 1024:>12,.1f}  {'':>6}  the same driver and store, no daemon"
            )
        if "peak_rss" in result:
            print(
                f"{'  peak RSS, MiB':<{width}}  {result['peak_rss'] / 2**20:>12,.1f}  "
                f"{result['ceiling_rss'] / 2**20:>12,.1f}  {'':>6}  every row held at once"
            )


if __name__ == "__main__":
    main()
