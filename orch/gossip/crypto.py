"""AES-GCM gossip encryption with a keyring, as memberlist and Serf do it.

Packets are sealed with the primary key and opened with any installed key, so a
key can be rotated at run time with no lost member: install the new key
everywhere, make it primary everywhere, then remove the old one.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from orch.errors import ConfigError, DecryptError

NONCE_SIZE = 12
TAG_SIZE = 16
KEY_SIZES = (16, 24, 32)


def parse_key(key: str | bytes) -> bytes:
    """A key from its base64 text (as in configuration files) or raw bytes, validated."""
    if isinstance(key, str):
        try:
            raw = base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("gossip key is not valid base64") from None
    else:
        raw = key
    if len(raw) not in KEY_SIZES:
        raise ConfigError(f"gossip key must be 16, 24 or 32 bytes (AES-128/192/256), got {len(raw)}")
    return bytes(raw)


def new_key() -> str:
    """A fresh AES-256 key as base64 text."""
    return base64.b64encode(os.urandom(32)).decode()


def key_id(key: bytes) -> str:
    """A short printable handle for a key (its base64 prefix), safe to log."""
    return base64.b64encode(key).decode()[:8]


class Keyring:
    """Installed keys; the first is the primary key used to encrypt."""

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        if not keys:
            raise ConfigError("a keyring needs at least one key")
        self._keys: list[bytes] = []
        self._ciphers: dict[bytes, AESGCM] = {}
        for k in keys:
            self.install(k)

    @property
    def primary(self) -> bytes:
        return self._keys[0]

    def keys(self) -> list[bytes]:
        return list(self._keys)

    def install(self, key: str | bytes) -> bytes:
        """Add a key (validated first); it opens packets at once but seals none yet."""
        raw = parse_key(key)
        if raw not in self._ciphers:
            self._ciphers[raw] = AESGCM(raw)
            self._keys.append(raw)
        return raw

    def use(self, key: str | bytes) -> None:
        """Make an installed key the primary one."""
        raw = parse_key(key)
        if raw not in self._ciphers:
            raise ConfigError(f"key {key_id(raw)} is not installed; install it first")
        self._keys.remove(raw)
        self._keys.insert(0, raw)

    def remove(self, key: str | bytes) -> None:
        """Remove a key that is not the primary one."""
        raw = parse_key(key)
        if raw == self.primary:
            raise ConfigError("cannot remove the primary key; make another key primary first")
        if raw in self._ciphers:
            del self._ciphers[raw]
            self._keys.remove(raw)

    def set_keys(self, keys: list[str | bytes]) -> list[str]:
        """Make the installed keys exactly ``keys``, the first one primary (a reload): install
        the new ones, switch the primary, remove the others. Every key is checked before
        anything changes. Returns what changed, one phrase each, keys shown by ``key_id``."""
        wanted = [parse_key(k) for k in keys]
        if not wanted:
            raise ConfigError("a keyring needs at least one key")
        changes = []
        for raw in wanted:
            if raw not in self._ciphers:
                self.install(raw)
                changes.append(f"installed key {key_id(raw)}")
        if self.primary != wanted[0]:
            self.use(wanted[0])
            changes.append(f"primary key is now {key_id(wanted[0])}")
        for raw in self.keys():
            if raw not in wanted:
                self.remove(raw)
                changes.append(f"removed key {key_id(raw)}")
        return changes

    def encrypt(self, payload: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._ciphers[self.primary].encrypt(nonce, payload, aad)

    def decrypt(self, body: bytes, aad: bytes) -> bytes:
        if len(body) < NONCE_SIZE + TAG_SIZE:
            raise DecryptError("encrypted body too short")
        nonce, sealed = body[:NONCE_SIZE], body[NONCE_SIZE:]
        for k in self._keys:
            try:
                return self._ciphers[k].decrypt(nonce, sealed, aad)
            except Exception:  # cryptography's InvalidTag: try the next key
                continue
        raise DecryptError("no installed key opens this packet")
