"""The runtime's edge to the wire: Allocation messages in, statuses out.

Only this module of the runtime imports the generated protobuf code; the rest
works on ``AllocSpec`` and ``AllocStatus``.
"""

from __future__ import annotations

from typing import cast

from orch.jobspec.model import group_from_proto
from orch.v1 import node_pb2
from orch.vocab import ALLOC_HEALTH, CLIENT_STATUS, DESIRED_STATUS, JOB_TYPE, namespace_of

from .state import AllocSpec, AllocStatus, Desired


def alloc_spec_from_proto(pb: node_pb2.Allocation) -> AllocSpec:
    """The desired allocation an Allocation message describes."""
    return AllocSpec(
        id=pb.id, name=pb.name, namespace=namespace_of(pb.namespace), job=pb.job,
        job_version=pb.job_version, job_type=JOB_TYPE.word(pb.job_type),
        group=group_from_proto(pb.spec), index=pb.index, ports=dict(pb.ports),
        desired=cast(Desired, DESIRED_STATUS.word(pb.desired_status)),
        job_meta=dict(pb.job_meta), payload=pb.payload, healthy=pb.healthy)


def alloc_status_to_proto(status: AllocStatus) -> node_pb2.Allocation:
    """An Allocation message carrying what the agent reports: id, client status, whether
    every task runs and passes its checks (``checks_healthy``), the agent's verdict for
    deployments (``deployment_health``: the controller takes ``healthy`` from it), ports
    and task states with their events (the controller merges it into its copy)."""
    pb = node_pb2.Allocation(
        id=status.alloc_id, client_status=CLIENT_STATUS.value(status.client_status),
        checks_healthy=status.healthy, ports=dict(status.ports), job_version=status.job_version,
        modify_time_ns=status.modify_time_ns, description=status.description,
        deployment_health=ALLOC_HEALTH.value(status.deployment_health)
        if status.deployment_health else node_pb2.ALLOC_HEALTH_UNSPECIFIED)
    for name, t in status.tasks.items():
        pb.tasks[name].CopyFrom(node_pb2.TaskState(
            state=t.state, failed=t.failed, restarts=t.restarts, exit_code=t.exit_code,
            started_at_ns=t.started_at_ns, finished_at_ns=t.finished_at_ns, healthy=t.healthy,
            events=[node_pb2.TaskEvent(time_ns=e.time_ns, type=e.type, message=e.message)
                    for e in t.events]))
    return pb
