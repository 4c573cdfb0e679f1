"""What an agent's report of an allocation changes in the controller's record of it (pure).

Agents report the newest status of each allocation (``agent.controller_link`` keeps one
report per allocation until it is sent), and the controller keeps the newest report per
allocation until its next commit (``controller.nodes``): a pending report and the running
one that follows it within a batch are one write. ``merge_report`` folds one report into
the record: the client status (and since when), whether the tasks pass their checks, the
task states and events, the agent's description, and — from an agent that judges it
(``deployment_health``, as Nomad's clients do) — whether the allocation is healthy for its
deployment; for allocations whose agent does not judge, the controller times health itself
(``controller.deployments.health_updates``).
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.planner import event
from controller.state import RUN, RUNNING, TERMINAL
from orch.v1 import controller_pb2, node_pb2
from orch.vocab import CLIENT_STATUS

HEALTHY = node_pb2.ALLOC_HEALTH_HEALTHY


@dataclass(slots=True)
class Merged:
    alloc: node_pb2.Allocation
    """The record with the report merged in."""
    events: list[controller_pb2.Event]
    """What the report says happened (a new client status, restarts, health)."""
    health_changed: bool = False
    """``healthy`` changed on the agent's verdict."""


def judged_healthy(a: node_pb2.Allocation) -> bool:
    """Whether an allocation whose agent judges its health is healthy: the agent says so,
    it runs, and it is still desired to run."""
    return a.deployment_health == HEALTHY and a.client_status == RUNNING and \
        a.desired_status == RUN


def _same_tasks(a: node_pb2.Allocation, u: node_pb2.Allocation) -> bool:
    """``a.tasks == u.tasks``, key by key: protobuf's map has no comparison of its own, and
    the generic one builds a dict of each side (a seventh of the controller's samples while a
    fleet's reports came in, the garbage collector's pauses it set off included; key by key,
    the controller's CPU per allocation placed fell by a tenth)."""
    mine, theirs = a.tasks, u.tasks
    if len(mine) != len(theirs):
        return False
    return all(name in mine and mine[name] == theirs[name] for name in theirs)


def merge_report(a: node_pb2.Allocation, u: node_pb2.Allocation, now_ns: int) -> Merged | None:
    """Merge report ``u`` into ``a`` (the controller's record: a copy of its own, changed in
    place); None when the report changes nothing, or comes about an allocation already given
    up on."""
    was = a.client_status
    if was in TERMINAL and a.desired_status != RUN and u.client_status not in TERMINAL:
        return None  # a late report about an allocation already given up on
    changed = False
    if u.client_status and u.client_status != was:
        a.client_status = u.client_status
        a.client_since_ns = now_ns
        changed = True
    checks = u.checks_healthy and a.client_status == RUNNING
    if checks != a.checks_healthy:
        if checks:
            a.checks_healthy_since_ns = now_ns
        a.checks_healthy = checks
        changed = True
    if u.deployment_health != a.deployment_health:
        a.deployment_health = u.deployment_health
        changed = True
    health_changed = False
    if a.deployment_health:  # the agent judges: its verdict is the allocation's health
        healthy = judged_healthy(a)
        if healthy != a.healthy:
            a.healthy = healthy
            health_changed = changed = True
    restarted = []
    if not _same_tasks(a, u):
        for name, t in u.tasks.items():
            before = a.tasks[name].restarts if name in a.tasks else 0
            if t.restarts > before:
                why = next((e.message for e in reversed(t.events) if e.type == "Restarting"), "")
                restarted.append((name, t.restarts, why))
        a.tasks.clear()
        for name, t in u.tasks.items():
            a.tasks[name].CopyFrom(t)
        changed = True
    if u.description and u.description != a.description:
        a.description = u.description
        changed = True
    if not changed:
        return None
    a.modify_time_ns = now_ns
    events = []
    if a.client_status != was:
        status = CLIENT_STATUS.word(a.client_status)
        events.append(event("allocation", f"Allocation{status.capitalize()}", a.id,
                            f"{a.name} is {status}", now_ns, allocation=a))
    for name, n, why in restarted:
        events.append(event("allocation", "AllocationRestarted", a.id,
                            f"{a.name}: task {name} restarted ({n} so far)"
                            + (f": {why}" if why else ""), now_ns, allocation=a))
    if health_changed:
        events.append(event("allocation", "AllocationHealthy" if a.healthy
                            else "AllocationUnhealthy", a.id,
                            f"{a.name} is {'healthy' if a.healthy else 'not healthy'}", now_ns))
    return Merged(a, events, health_changed)
