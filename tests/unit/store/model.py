"""The store contract as plain Python: what ``load`` and ``events_since`` of any backend give.

Deliberately naive (copies everything, sorts on every put) so that it is easy to
check by reading against the docstrings of ``controller.store.base``.
"""

from __future__ import annotations

import copy
from typing import TypeVar

from google.protobuf.message import Message

from controller.store import Changes, StoreSnapshot
from orch.v1 import controller_pb2, node_pb2

M = TypeVar("M", bound=Message)


def _copy(msg: M) -> M:
    out = type(msg)()
    out.CopyFrom(msg)
    return out


class Model:
    def __init__(self, *, max_evaluations: int, max_events: int) -> None:
        self.max_evaluations = max_evaluations
        self.max_events = max_events
        self.allocs: dict[str, node_pb2.Allocation] = {}
        self.snap = StoreSnapshot(allocs=self.allocs)
        self.events: list[controller_pb2.Event] = []
        self.eval_seq = 0
        """The last place given to an evaluation (a deleted one's is not given again)."""
        self.seqs: dict[str, int] = {}

    def apply(self, c: Changes) -> tuple[int, list[int]]:
        """Commit ``c``: (the new index, the indexes its events get). ``c`` is left as it is."""
        s = self.snap
        for key in c.purge_jobs:
            s.jobs.pop(key, None)
        for ns, name, version in c.delete_job_versions:
            kept = [v for v in s.jobs.get((ns, name), []) if v.version != version]
            if kept:
                s.jobs[(ns, name)] = kept
            else:
                s.jobs.pop((ns, name), None)
        for eid in c.delete_evaluations:
            s.evaluations = [e for e in s.evaluations if e.id != eid]
            self.seqs.pop(eid, None)
        for name in c.delete_meta:
            s.meta.pop(name, None)
        for aid in c.delete_allocs:
            self.allocs.pop(aid, None)
        for nid in c.delete_nodes:
            s.nodes.pop(nid, None)
        for did in c.delete_deployments:
            s.deployments.pop(did, None)
        for j in c.put_jobs:
            key = (j.namespace, j.name)
            versions = [v for v in s.jobs.get(key, []) if v.version != j.version]
            s.jobs[key] = sorted([*versions, _copy(j)], key=lambda v: v.version)
        for a in c.put_allocs:
            self.allocs[a.id] = _copy(a)
        for n in c.put_nodes:
            s.nodes[n.id] = _copy(n)
        for d in c.put_deployments:
            s.deployments[d.id] = _copy(d)
        for e in c.put_evaluations:
            where = [i for i, old in enumerate(s.evaluations) if old.id == e.id]
            if where:
                s.evaluations[where[0]] = _copy(e)
            else:
                self.eval_seq += 1
                self.seqs[e.id] = self.eval_seq
                s.evaluations.append(_copy(e))
        floor = self.eval_seq - self.max_evaluations
        s.evaluations = [e for e in s.evaluations if self.seqs[e.id] > floor]
        self.seqs = {e.id: self.seqs[e.id] for e in s.evaluations}
        indexes = []
        for ev in c.events:
            s.event_index += 1
            stored = _copy(ev)
            stored.index = s.event_index
            self.events.append(stored)
            indexes.append(s.event_index)
        del self.events[:-self.max_events]
        for name in c.delete_meta:
            s.meta.pop(name, None)
        s.meta.update(c.meta)
        s.index += 1
        return s.index, indexes

    def snapshot(self) -> StoreSnapshot:
        return copy.deepcopy(self.snap)

    def events_since(self, index: int, limit: int) -> list[controller_pb2.Event]:
        return [_copy(e) for e in self.events if e.index > index][:limit]
