"""Embedding the daemon as a library: several accounts polled by one process.

Each account gets its own daemon (its own session, loops, outputs and status) over its own
store file; they share one trio run and nothing else, so a locked or failing account never
slows the others. Here the accounts are simulated CGMs; a real deployment builds the same
settings for ``dexcomshare``, ``linkup`` and so on, one per person.

    python examples/embed_many_accounts.py --accounts alice,bob --seconds 5 --dir /tmp/stores
"""

from __future__ import annotations

import argparse
import sqlite3
from contextlib import AsyncExitStack
from pathlib import Path

import trio

from connect.assemble import assemble
from connect.logs import configure
from connect.settings import CoreSettings, load_source, settings_model


def account_settings(name: str, directory: Path, seed: int) -> CoreSettings:
    """The settings one account would have in its own CONNECT_* environment."""
    model = settings_model(load_source("sim"))
    return model(
        source="sim",
        store_path=str(directory / f"{name}.db"),
        account=name,
        backfill_days=2,
        http_bind="0",
        sim_seed=seed,
        sim_device=f"{name}-cgm",
    )


async def poll_accounts(names: list[str], directory: Path, seconds: float) -> None:
    source = load_source("sim")
    async with AsyncExitStack() as stack:
        daemons = [
            await stack.enter_async_context(assemble(account_settings(name, directory, seed), source))
            for seed, name in enumerate(names, start=1)
        ]
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for daemon in daemons:
                    await nursery.start(daemon.run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", default="alice,bob")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--dir", type=Path, default=Path("."))
    args = parser.parse_args()
    names = [name.strip() for name in args.accounts.split(",") if name.strip()]
    args.dir.mkdir(parents=True, exist_ok=True)
    configure(fmt="console", level="warning")
    trio.run(poll_accounts, names, args.dir, args.seconds)
    for name in names:
        with sqlite3.connect(args.dir / f"{name}.db") as conn:
            count, devices = conn.execute(
                "SELECT count(*), group_concat(DISTINCT device) FROM entries"
            ).fetchone()
        print(f"{name}: {count} entries from {devices}")


if __name__ == "__main__":
    main()
