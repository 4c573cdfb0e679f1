"""The etcd store over mTLS: etcd started with --client-cert-auth and certificates from
``orchctl tls`` (a member certificate of role etcd); a controller with the cluster CA's
client certificate reads and writes, one without a certificate or with a certificate of
another CA is refused, and a missing file is a configuration error that names it."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config import ControllerConfig
from controller.server import open_store
from controller.store import Changes, EtcdStore
from orch.errors import ConfigError, StoreError
from orch.pki import create_ca, create_cert
from orch.tls import TlsConfig
from tests.etcd_server import EtcdCluster
from tests.unit.store.records import event, node

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(60)]
HOST = "127.0.0.78"


def pki(base: Path, name: str) -> Path:
    """A CA in ``base/name`` with an etcd member certificate and a controller's."""
    d = base / name
    create_ca(d)
    create_cert(d, d, role="etcd", name="etcd", ips=[HOST])
    create_cert(d, d, role="controller", name="controller", ips=[HOST])
    return d


def client(d: Path) -> TlsConfig:
    return TlsConfig(ca_file=str(d / "ca.pem"), cert_file=str(d / "controller.pem"),
                     key_file=str(d / "controller-key.pem"))


async def test_only_a_client_certificate_of_the_cluster_ca_reaches_etcd(tmp_path: Path) -> None:
    ours, theirs = pki(tmp_path, "ours"), pki(tmp_path, "theirs")
    member = (str(ours / "ca.pem"), str(ours / "etcd.pem"), str(ours / "etcd-key.pem"))
    with EtcdCluster(1, first_host=78, tls=member) as cluster:
        cfg = ControllerConfig(data_dir=str(tmp_path / "ctl"), store="etcd",
                               etcd_endpoints=cluster.endpoints, etcd_tls=client(ours))
        store = open_store(cfg)  # as the controller opens it, [etcd_tls] from its config
        assert isinstance(store, EtcdStore)
        await store.open()
        try:
            assert await store.commit(Changes(put_nodes=[node("n1")], events=[event("a")])) == 1
            assert set((await store.load()).nodes) == {"n1"}
        finally:
            await store.close()

        plain = EtcdStore(cluster.endpoints, prefix="/orch", timeout=2.0)
        # A certificate of another CA; and theirs trusted, to see etcd refuse ours too.
        stranger = EtcdStore(cluster.endpoints, prefix="/orch", timeout=2.0,
                             tls=client(theirs))
        mixed = EtcdStore(cluster.endpoints, prefix="/orch", timeout=2.0, tls=TlsConfig(
            ca_file=str(ours / "ca.pem"), cert_file=str(theirs / "controller.pem"),
            key_file=str(theirs / "controller-key.pem")))
        for refused in (plain, stranger, mixed):
            with pytest.raises(StoreError):  # opening verifies etcd's limits: a first call
                await refused.open()
            await refused.close()

        store = EtcdStore(cluster.endpoints, prefix="/orch", tls=client(ours))
        await store.open()
        try:  # nothing the refused clients tried changed anything
            snap = await store.load()
            assert (snap.index, set(snap.nodes)) == (1, {"n1"})
        finally:
            await store.close()


def test_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    d = pki(tmp_path, "ours")
    broken = TlsConfig(ca_file=str(d / "ca.pem"), cert_file=str(d / "nope.pem"),
                       key_file=str(d / "controller-key.pem"))
    with pytest.raises(ConfigError, match=r"nope\.pem"):
        EtcdStore([f"{HOST}:2379"], tls=broken)
