"""Helpers for the runtime's integration tests."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable


async def until(condition: Callable[[], object], what: str, *, within: float = 10.0,
                every: float = 0.02) -> None:
    """Wait until ``condition()`` is true, for a state no event announces (a file, /proc)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    for _ in itertools.count():
        if condition():
            return
        if loop.time() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(every)
