"""Commands in tasks, before anything runs: what a client may ask, which allocation and
task it runs in, what the gate judges it by, who the event log names."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from controller.acl import Token
from controller.api.authz import RULES, Target, action_of, target_of
from controller.api.exec import caller_name, task_to_run
from controller.state import ClusterState
from controller.store.base import Changes
from controller.trust import PLAIN, Peer
from orch import execs
from orch.errors import NotFoundError, RequestError
from orch.jobspec.model import Group, Task, group_to_proto
from orch.v1 import controller_pb2, node_pb2


def start(*argv: str, **kw: Any) -> controller_pb2.ExecStart:
    return controller_pb2.ExecStart(alloc_id="a", command=argv, **kw)


def test_what_a_client_may_ask_to_run() -> None:
    execs.check_start(start("sh", "-c", "echo hi", tty=True, term="xterm-256color",
                            size=controller_pb2.TerminalSize(rows=50, cols=200)))
    for bad, why in [
        (start(), "no command"),
        (start(""), "no command"),
        (start(*(["x"] * 1025)), "at most 1,024"),
        (start("echo", "y" * 65_536), "at most 65,536"),
        (start("echo", "a\0b"), "NUL"),
        (start("sh", size=controller_pb2.TerminalSize(rows=10_001, cols=80)), "10,001 rows"),
        (start("sh", term="x" * 65), "TERM"),
        (start("sh", term="a\nb"), "TERM"),
    ]:
        with pytest.raises(RequestError, match=why):
            execs.check_start(bad)
    assert execs.describe(["sh", "-c", "echo 'hi'"]) == "sh -c 'echo '\"'\"'hi'\"'\"''"
    long = execs.describe(["x" * 600])
    assert len(long) < 560
    assert long.endswith("(600 characters)")


def alloc(**kw: Any) -> node_pb2.Allocation:
    group = Group(name="app", tasks=(Task(name="main", image="x"), Task(name="side", image="x")))
    a = node_pb2.Allocation(id="3f2a1b2c-0000", name="shell.app[0]", namespace="web", job="shell",
                            desired_status=node_pb2.DESIRED_STATUS_RUN,
                            client_status=node_pb2.CLIENT_STATUS_RUNNING,
                            spec=group_to_proto(group))
    a.tasks["main"].state = "running"
    a.tasks["side"].state = "running"
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def test_the_task_a_command_runs_in_and_why_not() -> None:
    assert task_to_run(alloc(), "") == "main"
    assert task_to_run(alloc(), "side") == "side"
    with pytest.raises(NotFoundError, match=r"has no task 'nope' \(tasks: main, side\)"):
        task_to_run(alloc(), "nope")
    stopped = alloc(desired_status=node_pb2.DESIRED_STATUS_STOP,
                    client_status=node_pb2.CLIENT_STATUS_COMPLETE)
    with pytest.raises(RequestError, match=r"allocation 3f2a1b2c \(shell.app\[0\]\) is stopped "
                                           r"\(complete\): a command runs only in a running"):
        task_to_run(stopped, "")
    with pytest.raises(RequestError, match="is pending"):
        task_to_run(alloc(client_status=node_pb2.CLIENT_STATUS_PENDING), "")
    dead = alloc()
    dead.tasks["side"].state = "dead"
    with pytest.raises(RequestError, match=r"task 'side' of allocation 3f2a1b2c .* is dead"):
        task_to_run(dead, "side")


def test_the_gate_judges_an_exec_by_the_allocation_its_first_message_names() -> None:
    assert RULES["ControllerService/ExecAllocation"].permission == "alloc-exec"
    assert action_of("ExecAllocation") == "alloc-exec"
    state = ClusterState()
    state.apply(Changes(put_allocs=[alloc()]), 1)
    first = controller_pb2.ExecRequest(start=start("sh"))
    first.start.alloc_id = "3f2a"
    assert target_of("ExecAllocation", first, state) == Target("web", "shell")
    assert target_of("ExecAllocation", None, state) == Target()
    assert target_of("ExecAllocation", controller_pb2.ExecRequest(stdin=b"x"), state) == Target()

    def token(*policies: str) -> Token:
        return Token(accessor="acc", name="t", policies=policies, secret_sha256="",
                     create_time_ns=0)
    assert token("namespace:web:alloc-exec").allows("alloc-exec", "web", "shell")
    assert token("management").allows("alloc-exec", "web", "shell")
    for policies in (("read",), ("submit",), ("namespace:web:read,submit,driver-*",),
                     ("namespace:other:alloc-exec",), ("operator", "node")):
        assert not token(*policies).allows("alloc-exec", "web", "shell"), policies


def test_the_event_log_names_the_token_the_certificate_and_the_address() -> None:
    ctx: Any = SimpleNamespace(peer=lambda: "ipv4:10.0.0.5:51234")
    tok = Token(accessor="1a2b3c4d5e", name="ops", policies=("management",), secret_sha256="",
                create_time_ns=0)
    assert caller_name((Peer(roles=frozenset({"cli"}), name="cli"), tok), ctx) == \
        "token 'ops' (1a2b3c4d), certificate cli (cli) from ipv4:10.0.0.5:51234"
    assert caller_name((PLAIN, None), ctx) == "anonymous from ipv4:10.0.0.5:51234"
