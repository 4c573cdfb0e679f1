"""Which controllers an agent obeys: those of the cluster it joined, at the newest store epoch.

The agent pins the cluster id it first learnt: from its join (``data_dir/pki/cluster-id``),
else from the first desired set it applies. A desired set of another cluster is refused,
said in the log and counted (``orch_agent_desired_refused_total{reason="cluster"}``):
it never starts nor stops anything here. Over TLS such a controller cannot even connect
(the join pinned the CA); the id guards plain-text clusters and stores swapped by mistake.

Within the cluster, a desired set carries the store's *epoch*, which only grows: a
controller on a fresh store, or one whose store was restored from a snapshot, has a newer
epoch. Its sets are applied although their versions are lower than the last one applied
(the version starts again with the store); a set of an older epoch (a controller left on
the store the restore replaced) is refused (reason ``epoch``). The pin is kept in
``data_dir/cluster.json``, so a restarted agent still knows both.

``judge`` is pure; ``PinFile`` reads and writes the pin.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orch import pki

log = logging.getLogger("agent")
FILE = "cluster.json"


@dataclass(frozen=True, slots=True)
class Pin:
    cluster_id: str = ""
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    apply: bool
    pin: Pin
    """The pin after this set (changed when it pinned the cluster or a newer epoch)."""
    reason: str = ""
    """Why it is refused: cluster or epoch ("" when applied)."""
    detail: str = ""
    remove_strays: bool = True
    """Whether this set may remove tasks no allocation claims (only when the sender is
    placed in this agent's cluster)."""


def judge(pin: Pin, cluster_id: str, epoch: int) -> Verdict:
    """What to do with a desired set from a controller of ``cluster_id`` at ``epoch``."""
    if not cluster_id:
        if pin.cluster_id:
            return Verdict(False, pin, "cluster", "the controller names no cluster (an older "
                           f"orch?); this agent belongs to cluster {pin.cluster_id}")
        return Verdict(True, pin, remove_strays=False)  # unplaceable: start, never remove
    if pin.cluster_id and cluster_id != pin.cluster_id:
        return Verdict(False, pin, "cluster", f"the controller belongs to cluster {cluster_id}; "
                       f"this agent joined cluster {pin.cluster_id}")
    if epoch < pin.epoch:
        return Verdict(False, pin, "epoch", f"the controller's store is of epoch {epoch}, older "
                       f"than this agent's {pin.epoch} (a store a restore replaced)")
    return Verdict(True, Pin(cluster_id, max(epoch, pin.epoch)))


class PinFile:
    """The pin in ``data_dir/cluster.json`` (first from the join's ``pki/cluster-id``)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / FILE
        self.bundle = pki.Bundle.of(data_dir)
        self.pin = self._load()
        self.refused: Counter[str] = Counter()
        """Desired sets refused, by reason (metrics)."""

    def _load(self) -> Pin:
        try:
            doc = json.loads(self.path.read_text())
            pin = Pin(str(doc.get("cluster_id", "")), int(doc.get("epoch", 0)))
        except FileNotFoundError:
            pin = Pin()
        except (ValueError, TypeError, AttributeError) as e:
            log.warning("the cluster pin cannot be read; pinning again from the join",
                        extra={"file": str(self.path), "error": str(e)})
            pin = Pin()
        joined = self.bundle.cluster_id()
        if joined and not pin.cluster_id:
            pin = Pin(joined, pin.epoch)
        return pin

    def judge(self, cluster_id: str, epoch: int) -> Verdict:
        verdict = judge(self.pin, cluster_id, epoch)
        if not verdict.apply:
            self.refused[verdict.reason] += 1
        elif verdict.pin != self.pin:
            if verdict.pin.cluster_id != self.pin.cluster_id:
                log.info("pinned the cluster", extra={"cluster_id": verdict.pin.cluster_id})
            if self.pin.epoch and verdict.pin.epoch != self.pin.epoch:
                log.warning("the controllers' store is of a newer epoch (restored, or new): "
                            "following it", extra={"epoch": verdict.pin.epoch,
                                                   "was": self.pin.epoch})
            self.pin = verdict.pin
            pki.write_file(self.path, json.dumps({"cluster_id": self.pin.cluster_id,
                                                  "epoch": self.pin.epoch}).encode(),
                           secret=False)
        return verdict


class PinCollector(Collector):
    def __init__(self, pins: PinFile) -> None:
        self.pins = pins

    def collect(self) -> Iterator[Metric]:
        refused = CounterMetricFamily("orch_agent_desired_refused", "Desired sets this agent "
                                      "refused: of another cluster (cluster) or of a store a "
                                      "restore replaced (epoch).", labels=["reason"])
        for reason in ("cluster", "epoch"):
            refused.add_metric([reason], self.pins.refused[reason])
        yield refused
        yield GaugeMetricFamily("orch_agent_store_epoch", "The controllers' store epoch this "
                                "agent follows (it grows at a restore).",
                                value=self.pins.pin.epoch)
