"""The child of the SIGKILL test: commits forever, printing each acknowledged commit index.

    python -m tests.integration.store_crash_child PATH

It continues from whatever the store holds, so the parent can kill it, check the
file, and start it again on the same file.
"""

from __future__ import annotations

import asyncio
import sys

from controller.store import Changes, SQLiteStore
from orch.v1 import controller_pb2, job_pb2, node_pb2


def alloc_ids(i: int) -> list[str]:
    """Commit ``i`` writes 1 to 40 allocations (so a kill often lands inside a transaction)."""
    return [f"a{i}.{k}" for k in range(1 + (i * 7) % 40)] if i > 0 else []


def event_keys(i: int) -> list[str]:
    return [f"{i}.{j}" for j in range(1 + i % 3)] if i > 0 else []


def changes_for(i: int) -> Changes:
    """Commit ``i``: job version ``i``, its allocations, the deletion of commit ``i - 2``'s."""
    return Changes(
        put_jobs=[job_pb2.Job(name="crash", namespace="default", version=i, meta={"i": str(i)})],
        put_allocs=[node_pb2.Allocation(id=a, job="crash", job_version=i, node_id=f"n{i % 5}",
                                        description="x" * 500) for a in alloc_ids(i)],
        delete_allocs=alloc_ids(i - 2),
        events=[controller_pb2.Event(topic="job", type="JobRegistered", key=k)
                for k in event_keys(i)],
        meta={"last": str(i)})


async def run(path: str) -> None:
    store = SQLiteStore(path)
    await store.open()
    i = (await store.load()).index
    while True:
        i += 1
        got = await store.commit(changes_for(i))
        if got != i:
            raise SystemExit(f"commit {i} got index {got}")
        sys.stdout.write(f"{i}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1]))
