"""The fuzz targets (tests/fuzz/targets.py) under hypothesis: untrusted input yields only the
documented error, and the targets' invariants hold. The same targets under atheris are the
fuzz tier: tests/fuzz/test_fuzz.py."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz import targets


@given(st.one_of(st.binary(max_size=1500),
                 st.sampled_from(targets.gossip_seeds()).flatmap(
                     lambda s: st.binary(max_size=64).map(lambda b: s[:len(s) // 2] + b))))
@settings(max_examples=500)
def test_gossip_packet(data: bytes) -> None:
    targets.gossip_packet(data)


@given(st.one_of(st.text(max_size=400).map(str.encode),
                 st.sampled_from(targets.job_seeds()).flatmap(
                     lambda s: st.integers(0, len(s)).map(lambda i: s[:i]))))
@settings(max_examples=200, deadline=None)
def test_job_file(data: bytes) -> None:
    targets.job_file(data)


@given(st.binary(max_size=600))
@settings(max_examples=300)
def test_job_message(data: bytes) -> None:
    targets.job_message(data)


def _mutations(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """A seed cut somewhere and continued with random bytes."""
    return st.sampled_from(seeds).flatmap(lambda s: st.tuples(
        st.integers(0, len(s)), st.binary(max_size=64)).map(lambda t: s[:t[0]] + t[1]))


@given(st.one_of(st.binary(max_size=600), _mutations(targets.stream_seeds())))
@settings(max_examples=300)
def test_stream_frame(data: bytes) -> None:
    targets.stream_frame(data)


@given(st.one_of(st.binary(max_size=400), _mutations(targets.endpoint_seeds())))
@settings(max_examples=300)
def test_endpoints(data: bytes) -> None:
    targets.endpoints(data)


@given(st.one_of(st.binary(max_size=800), _mutations(targets.snapshot_seeds())))
@settings(max_examples=200)
def test_snapshot(data: bytes) -> None:
    targets.snapshot(data)


@given(st.one_of(st.binary(max_size=400), _mutations(targets.grpc_seeds())))
@settings(max_examples=300)
def test_grpc_message(data: bytes) -> None:
    targets.grpc_message(data)


@given(st.one_of(st.binary(max_size=600), _mutations(targets.dns_seeds())))
@settings(max_examples=300)
def test_dns_query(data: bytes) -> None:
    targets.dns_query(data)
