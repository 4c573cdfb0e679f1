"""Vivaldi network coordinates: the pure client, and estimates on a simulated network."""

from __future__ import annotations

import math
import random
import statistics

from orch.gossip.config import GossipConfig
from orch.gossip.coordinate import Coordinate, VivaldiClient, VivaldiConfig, estimate_rtt
from orch.gossip.messages import Addr
from orch.gossip.sim import NetConfig, Simulator


def test_wire_form_round_trips_and_rejects_garbage() -> None:
    c = Coordinate((0.001, -0.002, 0, 0, 0, 0, 0, 0.0005), 0.75, 0.0001, -0.00002)
    back = Coordinate.from_wire(c.to_wire())
    assert back is not None
    assert math.isclose(estimate_rtt(back, c), estimate_rtt(c, c), abs_tol=1e-5)
    for bad in (None, "x", [[1] * 7, 1, 1, 1], [[1.5] * 8, 1, 1, 1], [[10**12] * 8, 1, 1, 1]):
        assert Coordinate.from_wire(bad) is None


def test_two_members_learn_their_distance() -> None:
    a = VivaldiClient(VivaldiConfig(), random.Random(1))
    b = VivaldiClient(VivaldiConfig(), random.Random(2))
    for _ in range(200):
        a.update("b", b.coord, 0.020)
        b.update("a", a.coord, 0.020)
    assert math.isclose(estimate_rtt(a.coord, b.coord), 0.020, rel_tol=0.1)
    assert a.coord.error < 0.5  # confident now


def test_nonsense_rtts_are_ignored() -> None:
    a = VivaldiClient(VivaldiConfig(), random.Random(1))
    before = a.coord
    a.update("b", before, -1.0)
    a.update("b", before, 100.0)
    assert a.coord == before


def test_estimates_are_close_to_the_true_rtt_on_a_simulated_network() -> None:
    rng = random.Random(7)
    n = 24
    where: dict[Addr, tuple[float, float]] = {}

    def path(a: Addr, b: Addr) -> float:  # one-way: half the distance, in seconds
        (x1, y1), (x2, y2) = where[a], where[b]
        return 0.0005 + math.hypot(x1 - x2, y1 - y2) / 2

    sim = Simulator(GossipConfig.lan(), net=NetConfig(path_latency=path, jitter=0.0002), seed=3)
    nodes = sim.start_cluster(n)
    for node in nodes:  # cities on a 80 ms x 80 ms map
        where[node.addr] = (rng.uniform(0, 0.08), rng.uniform(0, 0.08))
    sim.run_for(600)  # every member probes each other member ~25 times
    errors = []
    observer = nodes[0].core
    for a in nodes:
        for b in nodes:
            if a is b:
                continue
            # a's own coordinate against the one b last sent the observer, as `orchctl rtt`
            # computes it from the controller's view
            ca, cb = a.core.coordinate(a.name), observer.coordinate(b.name)
            assert ca is not None
            assert cb is not None
            true = 2 * path(a.addr, b.addr)
            errors.append(abs(estimate_rtt(ca, cb) - true) / true)
    assert statistics.median(errors) < 0.25, statistics.median(errors)
