"""Random sequences of commits, reopenings and replays give what the plain model gives, on etcd
(the session's member, a prefix per example): the state machine of
tests/unit/store/test_properties.py, which runs it on SQLite."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from controller.store import EtcdStore, Store
from tests.etcd_server import EtcdCluster
from tests.unit.store.test_properties import MAX_EVALUATIONS, MAX_EVENTS, StoreMachine


@pytest.mark.etcd
def test_the_etcd_store_against_the_model(etcd_server: EtcdCluster) -> None:
    endpoints = etcd_server.endpoints

    class EtcdMachine(StoreMachine):
        def make(self) -> Store:
            if not hasattr(self, "prefix"):
                self.prefix = f"/orch-test/model-{uuid.uuid4().hex[:12]}"
            return EtcdStore(endpoints, prefix=self.prefix, max_evaluations=MAX_EVALUATIONS,
                             max_events=MAX_EVENTS, verify_limits=False, compact_every=7)

    run_state_machine_as_test(EtcdMachine, settings=settings(
        max_examples=25, stateful_step_count=20, deadline=None))
