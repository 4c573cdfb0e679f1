"""Container labels, names and spec hashes."""

from __future__ import annotations

from agent.runtime import labels
from orch.jobspec.model import Network, Port, Task


def test_labels_round_trip_and_cannot_be_forged() -> None:
    task = Task(name="web", labels={"team": "a", labels.NODE: "forged"})
    got = labels.task_labels(alloc_id="a1", alloc_name="j.g[0]", namespace="default", job="j",
                             job_version=3, group="g", task=task, node="n1", spec="h")
    assert got["team"] == "a"
    assert got[labels.NODE] == "n1"
    ident = labels.identity(got)
    assert ident is not None
    assert (ident.alloc_id, ident.task, ident.node, ident.spec_hash, ident.job_version) == (
        "a1", "web", "n1", "h", 3)
    assert labels.identity({"team": "a"}) is None


def test_spec_hash_changes_with_the_task_not_the_version() -> None:
    net = Network(ports=(Port(label="http"),))
    a = labels.spec_hash(Task(name="web", image="x:1"), net, {"http": 20000})
    assert a == labels.spec_hash(Task(name="web", image="x:1"), net, {"http": 20000})
    assert a != labels.spec_hash(Task(name="web", image="x:2"), net, {"http": 20000})
    assert a != labels.spec_hash(Task(name="web", image="x:1"), net, {"http": 20001})


def test_container_name_is_docker_safe() -> None:
    assert labels.container_name("web", "1234-abcd") == "web-1234-abcd"
    assert labels.container_name("my task/1", "a") == "my_task_1-a"
    assert labels.container_name("_x", "a") == "orch_x-a"
