"""Commands run in a task (``orchctl alloc exec``): the limits every hop keeps, and the
check of what a client asks to run (the controller and the agent both make it).

The stream: the client's first message says what to run (``ExecStart``); then input
(at most ``MAX_FRAME`` bytes a message), an end of input, new terminal sizes; back come
output (in pieces of at most ``MAX_FRAME`` bytes) and, last, the exit code.
"""

from __future__ import annotations

import shlex

from orch.errors import RequestError
from orch.v1 import controller_pb2

MAX_FRAME = 64 * 1024
"""Bytes of input or output in one message: a screenful of a busy terminal, and small
enough that a slow client holds up little memory at each hop."""
MAX_ARGS = 1024
"""Words in a command."""
MAX_COMMAND_BYTES = 64 * 1024
"""Bytes of a command, every word together (ARG_MAX is larger; a person types less)."""
MAX_TERMINAL = 10_000
"""Rows or columns of a terminal."""
OPEN_TIMEOUT = 10.0
"""Seconds a client has to say what to run once its stream is open."""
MAX_RECORDED = 512
"""Characters of a command kept in the event log (the rest is cut, and says so)."""


def check_start(start: controller_pb2.ExecStart) -> None:
    """RequestError saying what is wrong with what a client asks to run."""
    argv = list(start.command)
    if not argv or not argv[0]:
        raise RequestError("no command: give the program to run and its arguments "
                           "(orchctl alloc exec ALLOC -- CMD ARGS...)")
    if len(argv) > MAX_ARGS:
        raise RequestError(f"the command has {len(argv):,} words; at most {MAX_ARGS:,}")
    size = sum(len(a.encode()) for a in argv)
    if size > MAX_COMMAND_BYTES:
        raise RequestError(f"the command is {size:,} bytes long; at most {MAX_COMMAND_BYTES:,}")
    if any("\0" in a for a in argv):
        raise RequestError("the command contains a NUL character")
    for what, n in (("rows", start.size.rows), ("columns", start.size.cols)):
        if n > MAX_TERMINAL:
            raise RequestError(f"a terminal of {n:,} {what}; at most {MAX_TERMINAL:,}")
    if len(start.term) > 64 or not start.term.isprintable():
        raise RequestError("TERM must be at most 64 printable characters")


def check_size(size: controller_pb2.TerminalSize) -> None:
    if size.rows > MAX_TERMINAL or size.cols > MAX_TERMINAL:
        raise RequestError(f"a terminal of {size.rows}x{size.cols}; at most "
                           f"{MAX_TERMINAL:,} rows and columns")


def describe(argv: list[str]) -> str:
    """The command as a shell would show it, cut at ``MAX_RECORDED`` characters."""
    text = shlex.join(argv)
    return text if len(text) <= MAX_RECORDED else text[:MAX_RECORDED] + f"… ({len(text):,} " \
        "characters)"
