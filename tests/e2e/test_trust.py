"""End to end on the Compose harness, which is set up as an installation is (the controller
bootstraps the cluster's trust, the agents join with a token): a host on the cluster's
network that is not a member is refused on every port (the controller's gRPC, the agents'
gRPC, gossip), while a job submitted with the management token runs."""

from __future__ import annotations

import json
import subprocess

import pytest

from orch.v1 import controller_pb2
from tests.docker_engine import docker
from tests.e2e.harness import AGENTS, Harness

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.timeout(240)]

OUTSIDER = 50
"""The outsider's host number on the harness network."""

PROBE = r"""
import json, socket, sys
import grpc
from orch.v1 import controller_pb2, controller_pb2_grpc

ctl, agents, ca = sys.argv[1], sys.argv[2].split(","), sys.argv[3].encode()
out = {}

def code(call):
    try:
        call()
        return "OK"
    except grpc.RpcError as e:
        return e.code().name

def controller(channel):
    return lambda: controller_pb2_grpc.ControllerServiceStub(channel).ListJobs(
        controller_pb2.ListJobsRequest(), timeout=5)

def agent(channel):
    return lambda: controller_pb2_grpc.AgentServiceStub(channel).Status(
        controller_pb2.AgentStatusRequest(), timeout=5)

out["controller plain"] = code(controller(grpc.insecure_channel(f"{ctl}:4647")))
tls = grpc.ssl_channel_credentials(ca)  # the cluster's CA is no secret; a certificate is
out["controller tls, no certificate"] = code(controller(grpc.secure_channel(
    f"{ctl}:4647", tls, options=[("grpc.ssl_target_name_override", "controller.orch")])))
for a in agents:
    out[f"agent {a} plain"] = code(agent(grpc.insecure_channel(f"{a}:4648")))
    out[f"agent {a} tls, no certificate"] = code(agent(grpc.secure_channel(
        f"{a}:4648", tls, options=[("grpc.ssl_target_name_override", "agent.orch")])))
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(20):  # gossip: packets that are not sealed with the cluster's key
    sock.sendto(b"\x01" + b"orch-outsider" * 8, (ctl, 7946))
print(json.dumps(out))
"""


def test_a_host_that_is_not_a_member_is_refused_on_every_port(cluster: Harness) -> None:
    ca = (cluster.operator_dir / "ca.pem").read_text()
    done = subprocess.run(
        ["docker", "run", "--rm", "--network", cluster.network,
         "--ip", f"{cluster.net}.{OUTSIDER}", cluster.image, "python3", "-c", PROBE,
         cluster.ip("controller"), ",".join(cluster.ip(a) for a in AGENTS), ca],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    codes = json.loads(done.stdout.strip().splitlines()[-1])
    assert codes, "the probe tried nothing"
    assert {k: v for k, v in codes.items() if v != "UNAVAILABLE"} == {}, codes
    # its gossip was dropped, not taken in: the controller names it among the refused sources
    members = cluster.api.ListMembers(controller_pb2.ListMembersRequest(), timeout=5)
    assert f"{cluster.net}.{OUTSIDER}" not in {m.address.rsplit(":", 1)[0] for m in members.members}
    assert any(r.address.startswith(f"{cluster.net}.{OUTSIDER}:") for r in members.refused)
    # while the operator's credentials drive the cluster
    allocs = cluster.deploy("trusted")
    assert len(allocs) == 5
    assert docker("ps", "-q", "--filter", "label=orch.job=trusted").split()
