"""The controller's metrics: leadership, scheduling, the loop, agents, the store."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.api.authz import Authorizer
from controller.evaluator import Evaluator
from controller.leadership import LeaderStatus
from orch.vocab import NODE_STATUS


class ControllerCollector(Collector):
    def __init__(self, leader: LeaderStatus, evaluator: Evaluator, authz: Authorizer) -> None:
        self.leader = leader
        self.evaluator = evaluator
        self.authz = authz

    def collect(self) -> Iterator[Metric]:
        ev, cluster = self.evaluator, self.evaluator.cluster
        state = cluster.state
        yield GaugeMetricFamily("orch_controller_leader", "1 while this controller leads.",
                                value=1 if self.leader.is_leader else 0)
        yield CounterMetricFamily("orch_controller_evaluations", "Evaluations run.",
                                  value=ev.evaluations)
        yield CounterMetricFamily("orch_controller_placements", "Allocations placed.",
                                  value=ev.placements)
        yield CounterMetricFamily("orch_controller_stops", "Allocations stopped by plans.",
                                  value=ev.stops)
        yield GaugeMetricFamily("orch_controller_blocked_jobs", "Jobs with allocations that "
                                "found no node (waiting for room).", value=ev.blocked)
        unplaced = sum(f.wanted - f.placed for e in state.evaluations for f in e.plan.failures
                       if e.status == "blocked")
        yield GaugeMetricFamily("orch_controller_unplaced_allocations", "Allocations the last "
                                "evaluations could not place.", value=unplaced)
        yield GaugeMetricFamily("orch_controller_eval_queue", "Evaluations waiting.",
                                value=ev.queue_depth)
        yield ev.scheduling_latency.family("orch_controller_scheduling_seconds",
                                           "Time the scheduler takes for one job.")
        yield ev.pass_latency.family("orch_controller_reconcile_seconds",
                                     "Time one pass of the scheduling loop takes.")
        yield cluster.commit_latency.family("orch_controller_store_commit_seconds",
                                            "Time the store takes to make a change durable.")
        yield cluster.commit_total_latency.family(
            "orch_controller_commit_seconds", "Time one commit takes: made durable, applied "
            "to memory, its events published, the agents' desired sets queued.")
        yield GaugeMetricFamily("orch_controller_connected_agents", "Agents holding a stream.",
                                value=sum(1 for n in state.nodes if cluster.connected(n)))
        nodes = GaugeMetricFamily("orch_controller_nodes", "Nodes by status.", labels=["status"])
        for name in ("ready", "down", "init"):
            nodes.add_metric([name], sum(1 for n in state.nodes.values()
                                         if NODE_STATUS.word(n.status) == name))
        yield nodes
        allocs = GaugeMetricFamily("orch_controller_allocations", "Allocations by desired and "
                                   "client status.", labels=["desired", "client"])
        for (desired, client), n in sorted(state.alloc_counts.items()):
            allocs.add_metric([desired, client], n)
        yield allocs
        yield GaugeMetricFamily("orch_controller_jobs", "Jobs known (any status).",
                                value=len(state.jobs))
        yield GaugeMetricFamily("orch_controller_state_index", "Index of the last commit.",
                                value=state.index)
        lead = self.leader.election
        yield GaugeMetricFamily("orch_controller_store_available", "1 while the store answers "
                                "(0: writes stop; reads serve what this controller holds).",
                                value=1 if lead is None or lead.store_available else 0)
        yield CounterMetricFamily("orch_controller_leader_terms", "Leadership terms this "
                                  "controller won (etcd; 1 on SQLite).",
                                  value=lead.terms if lead is not None else 1)
        denied = CounterMetricFamily("orch_controller_api_denied", "Operator API calls refused "
                                     "(reason: rate, unauthenticated, forbidden).",
                                     labels=["reason", "method"])
        for (reason, method), n in sorted(self.authz.denied.items()):
            denied.add_metric([reason, method], n)
        yield denied
