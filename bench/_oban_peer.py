"""The oban reference of the events suite, run by bench/events.py in an environment of its own.

oban (the Python port of Oban) needs Python 3.12 or newer; the bench runs on 3.11, so
bench/events.py makes a virtual environment from a Python 3.12+ interpreter, installs oban
there, and runs this script in it: ``python _oban_peer.py DSN BACKLOG LIMIT BUDGET``. The
script imports nothing of pgtide. It installs oban's schema in the (scratch) database, enqueues
BACKLOG no-op jobs in batches of 1,000, starts one Oban instance with one queue of the given
limit, and prints one JSON line: the rate, the jobs run, the seconds, and how it was
configured. The clock runs from start() to the last job's process() call, or stops after
BUDGET seconds (the rate is then over the jobs run so far).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import psycopg
from oban import Oban, worker
from oban.schema import install_sql

CHUNK = 1000
done = [0]


@worker(queue="default")
class Noop:
    async def process(self, job: Any) -> None:
        done[0] += 1


async def main(dsn: str, backlog: int, limit: int, budget: float) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(install_sql())
    pool = await Oban.create_pool(dsn)  # oban's documented pool (its default sizes)
    try:
        oban = Oban(pool=pool, queues={"default": limit})
        for start in range(0, backlog, CHUNK):
            count = min(CHUNK, backlog - start)
            await oban.enqueue_many([Noop.new({"n": start + n}) for n in range(count)])
        began = time.perf_counter()
        await oban.start()
        while done[0] < backlog and time.perf_counter() - began < budget:
            await asyncio.sleep(0.001)
        seconds = time.perf_counter() - began
        ran = done[0]
        await oban.stop()
        stats = pool.get_stats()
    finally:
        await pool.close()
    note = (
        f"oban {_version()} on Python {sys.version.split()[0]} (an environment of its own): "
        f"one Oban instance, queue limit {limit}, Oban.create_pool defaults (pool max "
        f"{stats.get('pool_max', '?')}), jobs enqueued with enqueue_many, async process()"
    )
    return {"rate": ran / seconds, "done": ran, "seconds": seconds, "note": note}


def _version() -> str:
    from importlib.metadata import version

    return version("oban")


if __name__ == "__main__":
    dsn, backlog, limit, budget = sys.argv[1:5]
    result = asyncio.run(main(dsn, int(backlog), int(limit), float(budget)))
    print(json.dumps(result), flush=True)
