"""The runtime's edge to the wire: Allocation messages in, statuses out.

Only this module of the runtime imports the generated protobuf code; the rest
works on ``AllocSpec`` and ``AllocStatus``.
"""

from __future__ import annotations

from orch.jobspec.model import group_from_proto
from orch.v1 import job_pb2, node_pb2

from .state import AllocSpec, AllocStatus, ClientStatus

_JOB_TYPES = {job_pb2.JOB_TYPE_BATCH: "batch", job_pb2.JOB_TYPE_SYSTEM: "system"}
_CLIENT_STATUS: dict[ClientStatus, node_pb2.ClientStatus.ValueType] = {
    "pending": node_pb2.CLIENT_STATUS_PENDING,
    "running": node_pb2.CLIENT_STATUS_RUNNING,
    "complete": node_pb2.CLIENT_STATUS_COMPLETE,
    "failed": node_pb2.CLIENT_STATUS_FAILED,
}


def alloc_from_proto(pb: node_pb2.Allocation) -> AllocSpec:
    """The desired allocation an Allocation message describes."""
    return AllocSpec(
        id=pb.id, name=pb.name, namespace=pb.namespace or "default", job=pb.job,
        job_version=pb.job_version, job_type=_JOB_TYPES.get(pb.job_type, "service"),
        group=group_from_proto(pb.spec), index=pb.index, ports=dict(pb.ports),
        desired="stop" if pb.desired_status == node_pb2.DESIRED_STATUS_STOP else "run")


def status_to_proto(status: AllocStatus) -> node_pb2.Allocation:
    """An Allocation message carrying what the agent reports: id, client status, whether
    every task runs and passes its checks (``checks_healthy``: the controller decides
    ``healthy`` from it and the group's min_healthy_time), ports and task states with
    their events (the controller merges it into its copy)."""
    pb = node_pb2.Allocation(
        id=status.alloc_id, client_status=_CLIENT_STATUS[status.client_status],
        checks_healthy=status.healthy, ports=dict(status.ports), job_version=status.job_version,
        modify_time_ns=status.modify_time_ns, description=status.description)
    for name, t in status.tasks.items():
        pb.tasks[name].CopyFrom(node_pb2.TaskState(
            state=t.state, failed=t.failed, restarts=t.restarts, exit_code=t.exit_code,
            started_at_ns=t.started_at_ns, finished_at_ns=t.finished_at_ns, healthy=t.healthy,
            events=[node_pb2.TaskEvent(time_ns=e.time_ns, type=e.type, message=e.message)
                    for e in t.events]))
    return pb
