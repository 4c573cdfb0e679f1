"""The controller's metrics: leadership, scheduling, the loop, agents, the store."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.api.authz import Authorizer
from controller.evaluator import Evaluator
from controller.gc import KINDS, GarbageCollector
from controller.gossip_events import GossipEvents
from controller.leadership import LeaderStatus
from controller.nodes import NodeMonitor
from controller.usage import UsageTable
from orch.vocab import NODE_STATUS


class ControllerCollector(Collector):
    def __init__(self, leader: LeaderStatus, evaluator: Evaluator, authz: Authorizer,
                 gossip_events: GossipEvents | None = None, gc: GarbageCollector | None = None,
                 monitor: NodeMonitor | None = None, usage: UsageTable | None = None) -> None:
        self.leader = leader
        self.evaluator = evaluator
        self.authz = authz
        self.gossip_events = gossip_events
        self.gc = gc
        self.monitor = monitor
        self.usage = usage

    def collect(self) -> Iterator[Metric]:
        ev, cluster = self.evaluator, self.evaluator.cluster
        state = cluster.state
        yield GaugeMetricFamily("orch_controller_leader", "1 while this controller leads.",
                                value=1 if self.leader.is_leader else 0)
        if self.gossip_events is not None:
            dropped = CounterMetricFamily(
                "orch_controller_user_events_dropped", "User events from gossip not recorded "
                "in the event log, by reason (rate: all members' rate; origin: one member's).",
                labels=["reason"])
            for reason in ("rate", "origin"):
                dropped.add_metric([reason], self.gossip_events.gate.dropped.get(reason, 0))
            yield dropped
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
        yield CounterMetricFamily("orch_controller_allocation_writes", "Allocation records "
                                  "written to the store (placements, agents' reports, health).",
                                  value=cluster.alloc_writes)
        yield GaugeMetricFamily("orch_controller_connected_agents", "Agents holding a stream.",
                                value=sum(1 for n in state.nodes if cluster.connected(n)))
        sent = CounterMetricFamily("orch_controller_expected_endpoint_messages", "Messages of "
                                   "the expected endpoints sent down agents' streams (kind: "
                                   "whole, changes).", labels=["kind"])
        for kind, n in cluster.endpoints.sent.items():
            sent.add_metric([kind], n)
        yield sent
        yield CounterMetricFamily("orch_controller_expected_services_built", "Services of the "
                                  "expected endpoints built (once per change, whatever the "
                                  "number of agents).", value=cluster.endpoints.built)
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
        yield from self._long_life()

    def _long_life(self) -> Iterator[Metric]:
        """Garbage collection, what the store holds, the half-down brake."""
        if self.gc is not None:
            collected = CounterMetricFamily("orch_controller_gc_collected", "Records the garbage "
                                            "collector deleted, by kind.", labels=["kind"])
            for kind in KINDS:
                collected.add_metric([kind], self.gc.collected[kind])
            yield collected
            yield CounterMetricFamily("orch_controller_gc_runs", "Garbage collections run "
                                      "(periodic and forced).", value=self.gc.runs)
            yield GaugeMetricFamily("orch_controller_gc_last_duration_seconds", "Time the last "
                                    "garbage collection took.",
                                    value=self.gc.last.seconds if self.gc.last else 0.0)
            yield CounterMetricFamily("orch_controller_store_defragmentations", "Times the "
                                      "store was rewritten in order (store_defrag_interval).",
                                      value=self.gc.defragmented)
            yield GaugeMetricFamily("orch_controller_store_defrag_last_duration_seconds",
                                    "Time the last defragmentation took (commits waited).",
                                    value=self.gc.defrag_seconds)
            size = self.gc.store_size
            if size is not None:
                yield GaugeMetricFamily("orch_controller_store_bytes", "Bytes the store uses "
                                        "(as of the last garbage collection).", value=size.bytes)
                rows = GaugeMetricFamily("orch_controller_store_records", "Records the store "
                                         "holds, by kind (as of the last garbage collection).",
                                         labels=["kind"])
                for kind, n in sorted(size.rows.items()):
                    rows.add_metric([kind], n)
                yield rows
        if self.monitor is not None:
            yield CounterMetricFamily("orch_controller_node_brake", "Liveness checks that left "
                                      "an unreachable node up: more than max_down_fraction of "
                                      "the nodes unreachable at once.", value=self.monitor.braked)
        if self.usage is not None:
            yield GaugeMetricFamily("orch_controller_usage_entries", "Allocations with usage "
                                    "reported by agents, held for the autoscaler.",
                                    value=len(self.usage))
