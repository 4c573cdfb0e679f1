"""The keyring: validated keys, rotation without a restart."""

from __future__ import annotations

import base64

import pytest

from orch.errors import ConfigError, DecryptError
from orch.gossip.crypto import Keyring, key_id, new_key, parse_key


def test_keys_are_validated() -> None:
    assert len(parse_key(new_key())) == 32
    assert parse_key(b"k" * 16) == b"k" * 16
    with pytest.raises(ConfigError, match="base64"):
        parse_key("not base64!")
    with pytest.raises(ConfigError, match="16, 24 or 32"):
        parse_key(base64.b64encode(b"short").decode())
    with pytest.raises(ConfigError):
        Keyring([])


def test_rotation_keeps_every_packet_readable() -> None:
    old, new = new_key(), new_key()
    a, b = Keyring([old]), Keyring([old])
    # step 1: install the new key everywhere; packets still sealed with the old one
    a.install(new)
    b.install(new)
    assert b.decrypt(a.encrypt(b"x", b""), b"") == b"x"
    # step 2: switch the primary one member at a time; both directions still open
    a.use(new)
    assert b.decrypt(a.encrypt(b"x", b""), b"") == b"x"
    assert a.decrypt(b.encrypt(b"y", b""), b"") == b"y"
    b.use(new)
    # step 3: remove the old key
    a.remove(old)
    b.remove(old)
    assert a.keys() == [parse_key(new)]
    assert a.decrypt(b.encrypt(b"z", b""), b"") == b"z"
    with pytest.raises(DecryptError):
        a.decrypt(Keyring([old]).encrypt(b"w", b""), b"")


def test_primary_cannot_be_removed_and_unknown_keys_cannot_be_used() -> None:
    k = new_key()
    ring = Keyring([k])
    with pytest.raises(ConfigError, match="primary"):
        ring.remove(k)
    with pytest.raises(ConfigError, match="not installed"):
        ring.use(new_key())
    assert key_id(parse_key(k)) == k[:8]


def test_set_keys_makes_the_keyring_what_a_reloaded_file_lists() -> None:
    old, new, bad = new_key(), new_key(), "not base64!"
    ring = Keyring([old])
    with pytest.raises(ConfigError):
        ring.set_keys([new, bad])  # checked before anything changes
    assert ring.keys() == [parse_key(old)]
    assert ring.set_keys([new, old]) == [f"installed key {new[:8]}", f"primary key is now {new[:8]}"]
    assert ring.primary == parse_key(new)
    assert ring.decrypt(Keyring([old]).encrypt(b"x", b""), b"") == b"x"  # the old key still opens
    assert ring.set_keys([new]) == [f"removed key {old[:8]}"]
    assert ring.keys() == [parse_key(new)]
    assert ring.set_keys([new]) == []
    with pytest.raises(ConfigError):
        ring.set_keys([])
