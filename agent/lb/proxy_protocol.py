"""PROXY protocol version 2 headers (HAProxy's proxy-protocol.txt, section 2.2); pure.

Sent first on a connection to an endpoint that asked for it (``Endpoint.proxy_protocol``),
so that it learns the client's address: the 12-byte signature, version 2 with the PROXY
command, the address family and transport, the length of the addresses, then source
address, destination address, source port and destination port, big-endian. UDP
endpoints get the header in front of every datagram (as bind9 and HAProxy's peers read
it). An address that is neither IPv4 nor IPv6 gets a LOCAL header (no addresses).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
VERSION_PROXY = 0x21
"""Version 2 (high nibble), command PROXY (low nibble)."""
VERSION_LOCAL = 0x20
STREAM, DGRAM = 0x1, 0x2
INET, INET6 = 0x10, 0x20


def _ip(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def header(src: tuple[Any, ...], dst: tuple[Any, ...], *, datagram: bool = False) -> bytes:
    """The v2 header for a client at ``src`` that reached us at ``dst`` (socket addresses:
    ``(host, port)``, or ``(host, port, flowinfo, scope)`` for IPv6)."""
    s, d = _ip(src[0]), _ip(dst[0])
    transport = DGRAM if datagram else STREAM
    if s is None or d is None:
        return SIGNATURE + struct.pack("!BBH", VERSION_LOCAL, 0, 0)
    if s.version != d.version:  # a v4 client on a v6 socket: both as v6
        s = ipaddress.IPv6Address(f"::ffff:{s}") if s.version == 4 else s
        d = ipaddress.IPv6Address(f"::ffff:{d}") if d.version == 4 else d
    family = INET if s.version == 4 else INET6
    body = s.packed + d.packed + struct.pack("!HH", src[1], dst[1])
    return SIGNATURE + struct.pack("!BBH", VERSION_PROXY, family | transport, len(body)) + body
