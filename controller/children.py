"""The children of periodic and parameterized jobs, read from the state; pure.

A periodic or parameterized job is a *parent*: it is never placed itself. Its children are
ordinary batch jobs named ``<parent>/periodic-<unix seconds>`` (one per cron slot, launched
by the leader: ``controller.periodic``) or ``<parent>/dispatch-<unix seconds>-<8 hex>``
(``orchctl job dispatch``), with ``parent`` set, in the parent's namespace. The last slot a
periodic parent launched (or skipped) is recorded in the store's meta under
``periodic/<namespace>/<job>``, in the same commit as the child, so that a new leader
launches neither a slot twice nor one it should not.

Children are bounded: at most ``MAX_ACTIVE_CHILDREN`` unfinished per parent (a launch or a
dispatch past it is refused), and only the newest ``KEEP_DEAD_CHILDREN`` finished ones are
kept (older ones are purged with their allocations); purging a parent purges its children.
"""

from __future__ import annotations

from controller.state import RUN, TERMINAL, ClusterState, job_key
from controller.store.base import Changes, JobKey
from orch.jobspec.periodic import Schedule
from orch.v1 import job_pb2

META_PREFIX = "periodic/"
KEEP_DEAD_CHILDREN = 10
"""Finished children kept per parent (the newest): their status and logs stay readable, as
Nomad keeps dead jobs until its garbage collector runs; older ones are purged."""
MAX_ACTIVE_CHILDREN = 1000
"""Unfinished children per parent: a launch or dispatch past it is refused, so that a job
that never finishes, dispatched in a loop, cannot fill the store."""
NS = 1_000_000_000


def launch_key(key: JobKey) -> str:
    """The meta key holding a periodic job's last slot (unix seconds)."""
    return f"{META_PREFIX}{key[0]}/{key[1]}"


def is_parent(job: job_pb2.Job) -> bool:
    return job.HasField("periodic") or job.HasField("parameterized")


def kind_of(job: job_pb2.Job) -> str:
    """periodic, parameterized, or "" for any other job."""
    if job.HasField("periodic"):
        return "periodic"
    return "parameterized" if job.HasField("parameterized") else ""


def children_of(state: ClusterState, key: JobKey) -> list[job_pb2.Job]:
    """The children of ``key`` (their latest versions), the oldest first."""
    ns, name = key
    prefix = name + "/"
    out = [versions[-1] for (cns, cname), versions in state.jobs.items()
           if cns == ns and cname.startswith(prefix) and versions and
           versions[-1].parent == name]
    return sorted(out, key=lambda j: (j.submit_time_ns, j.name))


def finished(state: ClusterState, child: job_pb2.Job) -> bool:
    """A child is finished when it was stopped, or every allocation it wants has ended
    (a child with no allocation yet has not)."""
    if child.stop:
        return True
    wanted = [a for a in state.allocs_of_job(job_key(child))
              if a.desired_status == RUN]
    return bool(wanted) and all(a.client_status in TERMINAL for a in wanted)


def last_slot(state: ClusterState, parent: job_pb2.Job) -> float:
    """The last slot decided for a periodic parent: the recorded one, or (never recorded)
    the time of its version's registration."""
    text = state.meta.get(launch_key(job_key(parent)), "")
    try:
        return float(text)
    except ValueError:
        return parent.submit_time_ns / NS


def next_launch(state: ClusterState, parent: job_pb2.Job, schedule: Schedule,
                now: float) -> int | None:
    """When a periodic parent launches next (None: stopped, or no slot ever again)."""
    if parent.stop or not parent.HasField("periodic"):
        return None
    return schedule.next_after(max(now, last_slot(state, parent)))


def make_child(parent: job_pb2.Job, name: str, now_ns: int, *,
               meta: dict[str, str] | None = None, payload: bytes = b"") -> job_pb2.Job:
    """A child of ``parent``: the parent's spec as a plain batch job, ``meta`` merged into
    its meta, version 1."""
    child = job_pb2.Job()
    child.CopyFrom(parent)
    child.ClearField("periodic")
    child.ClearField("parameterized")
    child.name = name
    child.parent = parent.name
    child.meta.update(meta or {})
    child.payload = payload
    child.version = 1
    child.submit_time_ns = now_ns
    child.stop = False
    child.stable = False
    child.status = job_pb2.JOB_STATUS_PENDING
    return child


def shown(child: job_pb2.Job) -> job_pb2.Job:
    """A child as events carry it: without its payload."""
    out = job_pb2.Job()
    out.CopyFrom(child)
    out.payload = b""
    return out


def collect(state: ClusterState, key: JobKey, keep: int = KEEP_DEAD_CHILDREN) -> Changes:
    """Purge the finished children of ``key`` past the newest ``keep``, with their
    allocations (the agents then remove what is left of them)."""
    dead = [c for c in children_of(state, key) if finished(state, c)]
    changes = Changes()
    for child in dead[:max(0, len(dead) - keep)]:
        ck = job_key(child)
        changes.purge_jobs.append(ck)
        changes.delete_allocs += [a.id for a in state.allocs_of_job(ck)
                                  if a.desired_status != RUN or a.client_status in TERMINAL]
    return changes
