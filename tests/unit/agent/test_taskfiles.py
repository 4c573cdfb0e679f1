"""A task's secrets and templates: what they render to, how a running task reacts to a
change, and writing them without following a link the task planted."""

from __future__ import annotations

import pytest

from agent.runtime.taskfiles import Sources, reaction, render_task
from orch.jobspec.model import SecretRef, Task, Template
from orch.templates import Endpoint


def _task(mode: str = "restart") -> Task:
    return Task(name="t", secrets=(SecretRef(name="db", env="DB_PASSWORD"),
                                   SecretRef(name="tls", file="key.pem")),
                templates=(Template(destination="local/app.conf", change_mode=mode,
                                    data='{% for e in service("kv") %}{{ e.address }}\n'
                                         "{% endfor %}"),
                           Template(destination="secrets/dsn", change_mode="noop",
                                    data='user:{{ secret("db") }}@{{ node.name }}', perms="0440")))


def _src(db: bytes = b"pw", kv: tuple[str, ...] = ("10.0.0.1:80",)) -> Sources:
    eps = [Endpoint(address=a, host=a.split(":")[0], port=int(a.split(":")[1]), node="n",
                    alloc_id=a) for a in kv]
    return Sources(secrets={"db": db, "tls": b"KEY"}, services=lambda n: eps if n == "kv" else [],
                   node={"name": "node-1"})


def test_render_task() -> None:
    r = render_task(_task(), _src(), in_container=False)
    assert r.problem == ""
    assert r.files == {"secrets/db": b"pw", "secrets/key.pem": b"KEY",
                       "local/app.conf": b"10.0.0.1:80\n", "secrets/dsn": b"user:pw@node-1"}
    assert r.modes["secrets/db"] == 0o400
    assert r.modes["secrets/dsn"] == 0o440
    assert r.env == {"DB_PASSWORD": "pw"}
    assert render_task(_task(), _src(), in_container=True).modes["secrets/db"] == 0o444


def test_a_missing_or_unfit_secret_is_a_problem_not_a_file() -> None:
    missing = render_task(_task(), Sources(secrets={}, services=lambda n: [], node={}),
                          in_container=False)
    assert "waiting for secret 'db'" in missing.problem
    assert not missing.files
    binary = render_task(_task(), _src(db=b"\xff\xfe"), in_container=False)
    assert "not UTF-8" in binary.problem


@pytest.mark.parametrize(("mode", "restart", "signals"), [
    ("restart", True, set()), ("signal", False, {"SIGHUP"}), ("noop", False, set())])
def test_a_template_change_does_what_its_change_mode_says(mode: str, restart: bool,
                                                          signals: set[str]) -> None:
    task = _task(mode)
    old = render_task(task, _src(), in_container=False)
    new = render_task(task, _src(kv=("10.0.0.1:80", "10.0.0.2:80")), in_container=False)
    r = reaction(task, old, new)
    assert r.changed == ("local/app.conf",)
    assert r.restart is restart
    assert r.signals == signals
    assert not reaction(task, old, old).changed


def test_a_secret_change_restarts_the_task() -> None:
    task = _task("noop")
    r = reaction(task, render_task(task, _src(), in_container=False),
                 render_task(task, _src(db=b"new"), in_container=False))
    assert r.restart
    assert set(r.changed) == {"secrets/db", "secrets/dsn", "env"}
