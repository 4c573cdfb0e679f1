"""The gossip member's metrics, read from its counters at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orch.gossip.coordinate import estimate_rtt
from orch.gossip.core import RTT_BUCKETS
from orch.gossip.messages import Code, Status
from orch.gossip.transport import GossipNode
from orch.metrics import Hist, histogram

DROP_REASONS = ("decode", "decrypt", "label", "version", "misdirected", "conflict", "internal",
                "counter", "depth", "too_many", "too_large", "state_size", "members",
                "candidates", "unconfirmed", "busy", "relays", "flood")
"""Why input is dropped: the envelope (decode, decrypt, label, version), a message for
someone else or claiming a live member's name (misdirected, conflict), a bug (internal), and
the bounds of ``GossipConfig`` (counter: past counter_limit or counter_window; depth:
max_state_depth; too_many: max_packet_messages or members in a push-pull; too_large:
max_stream_frame; state_size: max_state_bytes; members: max_members with no tombstone to
forget; candidates: max_candidates; unconfirmed: a member heard of that did not answer its
pings; busy: max_streams_in or push-pull members waiting to be merged; relays: max_relays;
flood: a datagram waiting in a full inbox, inbox_per_source or inbox_size)."""


class GossipCollector(Collector):
    def __init__(self, node: GossipNode) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        core, wire = self.node.core, self.node.wire
        if core is None:
            return
        st = core.stats
        members = GaugeMetricFamily("orch_gossip_members", "Members by status, as this member sees "
                                    "them (itself included).", labels=["state"])
        counts = dict.fromkeys(Status, 0)
        for m in core.members.values():
            counts[m.status] += 1
        for status, n in counts.items():
            members.add_metric([str(status)], n)
        yield members
        yield _counter("orch_gossip_probes", "Probes this member started.", st.probes)
        yield _counter("orch_gossip_probe_failures", "Probes that got no ack, directly or "
                       "through others.", st.probe_failures)
        yield _counter("orch_gossip_indirect_probes", "Ping-req messages sent for failed direct "
                       "probes.", st.indirect_probes)
        yield _counter("orch_gossip_suspicions", "Suspicions this member raised.", st.suspicions)
        yield _counter("orch_gossip_refutations", "Suspicions of itself this member refuted.",
                       st.refutations)
        yield _counter("orch_gossip_state_repairs", "Full exchanges started with the owner of "
                       "a node state this member lagged behind.", st.repairs)
        yield _counter("orch_gossip_state_repairs_delayed", "State repairs put off by "
                       "state_repair_rate.", st.repairs_delayed)
        yield histogram("orch_gossip_probe_rtt_seconds", "Round-trip time of direct probes.",
                        RTT_BUCKETS, st.rtt_counts, st.rtt_sum)
        sent = CounterMetricFamily("orch_gossip_messages_sent", "Messages sent, by type.",
                                   labels=["type"])
        received = CounterMetricFamily("orch_gossip_messages_received",
                                       "Messages received, by type.", labels=["type"])
        sent_bytes = CounterMetricFamily("orch_gossip_message_sent_bytes",
                                         "Encoded message bytes sent, by type (no envelopes).",
                                         labels=["type"])
        for code in Code:
            name = code.name.lower()
            sent.add_metric([name], st.sent[code])
            received.add_metric([name], st.received[code])
            sent_bytes.add_metric([name], st.sent_bytes[code])
        yield sent
        yield received
        yield sent_bytes
        yield _counter("orch_gossip_packets_sent", "UDP datagrams sent.", wire.packets_sent)
        yield _counter("orch_gossip_packets_received", "UDP datagrams received.",
                       wire.packets_received)
        yield _counter("orch_gossip_sent_bytes", "Bytes sent (UDP and TCP, envelopes included).",
                       wire.bytes_sent)
        yield _counter("orch_gossip_received_bytes", "Bytes received (UDP and TCP).",
                       wire.bytes_received)
        yield _counter("orch_gossip_streams", "TCP state exchanges this member started.",
                       wire.streams_sent)
        yield _counter("orch_gossip_stream_failures", "TCP state exchanges that failed.",
                       wire.stream_failures)
        dropped = CounterMetricFamily("orch_gossip_dropped", "Packets and messages dropped, by "
                                      "reason.", labels=["reason"])
        for reason in DROP_REASONS:
            dropped.add_metric([reason], wire.dropped.get(reason, 0) + st.dropped.get(reason, 0))
        yield dropped
        yield GaugeMetricFamily("orch_gossip_health_score", "Local health (Lifeguard): 0 is "
                                "healthy; timeouts scale by score + 1.", value=core.awareness.score)
        yield GaugeMetricFamily("orch_gossip_broadcast_queue", "Updates waiting to be gossiped.",
                                value=core.queued_broadcasts)
        yield GaugeMetricFamily("orch_gossip_candidates", "Members heard of from others and not "
                                "yet confirmed by a ping.", value=core.candidates)
        yield GaugeMetricFamily("orch_gossip_incarnation", "This member's incarnation number.",
                                value=core.incarnation)
        ue = core.user_events
        events = CounterMetricFamily("orch_gossip_user_events", "User events received, by "
                                     "outcome (delivered once; duplicate copies; stale: from "
                                     "before this member joined or too old; refused: a clock "
                                     "past the limit or window, or too many at one time).",
                                     labels=["outcome"])
        for outcome, n in (("delivered", ue.delivered), ("duplicate", ue.duplicates),
                           ("stale", ue.stale), ("refused", ue.refused)):
            events.add_metric([outcome], n)
        yield events
        yield GaugeMetricFamily("orch_gossip_event_clock", "This member's user-event Lamport "
                                "clock.", value=ue.clock)
        me = core.coordinate(core.name)
        if me is not None:
            est = Hist(RTT_BUCKETS)
            for c in core.coordinates.values():
                est.observe(estimate_rtt(me, c))
            yield est.family("orch_gossip_rtt_estimate_seconds", "Estimated round-trip times "
                             "to the peers this member probed (network coordinates).")
            yield GaugeMetricFamily("orch_gossip_coordinate_error", "Confidence in this "
                                    "member's coordinate (0 best, 1.5 worst).", value=me.error)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
