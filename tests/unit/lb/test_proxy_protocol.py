"""PROXY protocol v2 headers, byte for byte (HAProxy's proxy-protocol.txt, 2.2)."""

from __future__ import annotations

from agent.lb.proxy_protocol import header

SIG = bytes.fromhex("0d0a0d0a000d0a515549540a")


def test_ipv4_tcp() -> None:
    assert header(("192.0.2.10", 51234), ("10.0.0.1", 8080)) == (
        SIG + bytes([0x21, 0x11, 0x00, 0x0C]) + bytes([192, 0, 2, 10, 10, 0, 0, 1])
        + (51234).to_bytes(2, "big") + (8080).to_bytes(2, "big"))


def test_ipv4_udp_family_byte() -> None:
    h = header(("127.0.0.1", 1), ("127.0.0.2", 2), datagram=True)
    assert h[12:16] == bytes([0x21, 0x12, 0x00, 0x0C])
    assert len(h) == 16 + 12


def test_ipv6_tcp() -> None:
    h = header(("2001:db8::1", 443, 0, 0), ("2001:db8::2", 8443, 0, 0))
    assert h[:16] == SIG + bytes([0x21, 0x21, 0x00, 0x24])
    assert h[16:32] == bytes.fromhex("20010db8000000000000000000000001")
    assert h[32:48] == bytes.fromhex("20010db8000000000000000000000002")
    assert h[48:] == (443).to_bytes(2, "big") + (8443).to_bytes(2, "big")


def test_v4_mapped_addresses_are_sent_as_ipv4() -> None:
    assert header(("::ffff:192.0.2.1", 5, 0, 0), ("::ffff:10.0.0.1", 6, 0, 0)) == \
        header(("192.0.2.1", 5), ("10.0.0.1", 6))


def test_mixed_families_become_ipv6_and_unknown_ones_local() -> None:
    h = header(("192.0.2.1", 5), ("2001:db8::2", 6, 0, 0))
    assert h[13] == 0x21
    assert h[16:32] == bytes.fromhex("00000000000000000000ffffc0000201")
    assert header(("/tmp/sock", 0), ("10.0.0.1", 1)) == SIG + bytes([0x20, 0x00, 0x00, 0x00])
