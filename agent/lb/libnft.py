"""libnftables through ctypes: one buffer of commands is one nftables transaction.

The library (Debian: libnftables1, with the ``nftables`` package) runs in this process, in
the network namespace of the calling thread; no ``nft`` process is started and no shell is
involved. A context is not thread-safe: calls are serialised by a lock.
"""

from __future__ import annotations

import ctypes
import json
import threading
from typing import Any

from orch.errors import OrchError

LIBRARY = "libnftables.so.1"
_OUTPUT_JSON = 1 << 4
"""NFT_CTX_OUTPUT_JSON."""


class NftError(OrchError):
    """nftables refused a transaction (nothing of it was applied)."""


class Nft:
    """A libnftables context."""

    def __init__(self, library: str = LIBRARY) -> None:
        lib = ctypes.CDLL(library)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._lib = lib
        self._lock = threading.Lock()
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise NftError("libnftables: cannot make a context")
        self._ctx = ctx
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        lib.nft_ctx_output_set_flags(ctx, _OUTPUT_JSON)

    def run(self, text: str) -> str:
        """Run ``text`` (commands, one per line) as one transaction; its output (JSON for
        ``list`` commands). Raises NftError with nftables' message when it is refused."""
        with self._lock:
            if self._ctx is None:
                raise NftError("libnftables context closed")
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, text.encode())
            out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode()
        if rc != 0:
            raise NftError(f"nftables refused the transaction: {err.strip()[:2000]}")
        return out

    def list_json(self, what: str) -> list[dict[str, Any]]:
        """``list <what>`` as nftables JSON objects (metainfo left out)."""
        out = self.run(f"list {what}")
        items: list[dict[str, Any]] = json.loads(out).get("nftables", []) if out.strip() else []
        return [x for x in items if "metainfo" not in x]

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None


def unavailable() -> str:
    """Why the kernel data plane cannot run here ('' when it can): libnftables is missing,
    or this process may not change nftables (no CAP_NET_ADMIN), or the kernel lacks NAT."""
    try:
        nft = Nft()
    except OSError as e:
        return f"libnftables is missing ({e}; Debian: apt-get install nftables)"
    except NftError as e:
        return str(e)
    try:
        # A check run (-c) of a NAT table of our own: needs CAP_NET_ADMIN and the modules,
        # changes nothing.
        nft._lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
        nft._lib.nft_ctx_set_dry_run(nft._ctx, True)
        nft.run("add table ip orch_probe\n"
                "add chain ip orch_probe p { type nat hook prerouting priority -100; }\n"
                "add rule ip orch_probe p dnat ip to numgen inc mod 2 map { 0 : 127.0.0.1, 1 : 127.0.0.2 }"
                "\n")
    except NftError as e:
        msg = str(e)
        if "Operation not permitted" in msg:
            return "no CAP_NET_ADMIN: nftables may not be changed by this process"
        return msg
    finally:
        nft.close()
    return ""
