"""What both daemons share: flags over a TOML file, logging, uvloop, signals, the service manager.

Signals: SIGTERM and SIGINT stop a daemon gracefully (its server stops accepting,
finishes what is in flight and leaves the gossip cluster). SIGHUP re-reads the
configuration (the file, with the command line's flags still winning) and applies
what can change while running: the log level and format, the gossip keys, and
the server's own live settings (the agent's tags); every other change waits for a
restart, and the log says which.

Under systemd (``Type=notify``) the daemon speaks sd_notify(3) itself: ``READY=1``
once it serves, ``RELOADING=1`` then ``READY=1`` around a reload, ``STOPPING=1``
when it stops, ``STATUS=`` lines for ``systemctl status``, and ``WATCHDOG=1`` every
half ``WatchdogSec=`` from the event loop, so a loop that hangs stops the pings
and systemd restarts the daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from orch import config as configfile
from orch import logs
from orch.config import DaemonConfig
from orch.errors import ConfigError
from orch.gossip.config import GossipConfig
from orch.net import GOSSIP_PORT, is_loopback

if TYPE_CHECKING:
    from orch.gossip.transport import GossipNode

C = TypeVar("C", bound=DaemonConfig)
log = logging.getLogger("daemon")

LIVE_SETTINGS = ("log_level", "log_format", "keys")
"""Settings every daemon applies on SIGHUP; a server may add its own (the agent's tags)."""


def common_flags(ap: argparse.ArgumentParser) -> None:
    """The flags both daemons take (Nomad-style: flags override the file)."""
    ap.add_argument("--config", metavar="FILE", help="TOML configuration file (flags override it)")
    ap.add_argument("--name", help="member name (default: host name)")
    ap.add_argument("--bind", metavar="ADDR:PORT", help=f"gossip address (default 0.0.0.0:{GOSSIP_PORT})")
    ap.add_argument("--advertise", metavar="ADDR:PORT", help="gossip address announced to others")
    ap.add_argument("--join", metavar="ADDR:PORT", action="append", default=None,
                    help="gossip seed (repeatable)")
    ap.add_argument("--key", action="append", default=None,
                    help="gossip key, base64 (repeatable; the first is primary)")
    ap.add_argument("--label", help="cluster label (packets with another label are dropped)")
    ap.add_argument("--profile", choices=("lan", "fast"),
                    help="gossip timings: lan (orch's defaults: probe every 0.7 s) or fast (tests)")
    ap.add_argument("--data-dir", help="state directory (default /var/lib/orch)")
    ap.add_argument("--metrics-addr", metavar="ADDR:PORT",
                    help="where /metrics is served (empty: not served)")
    ap.add_argument("--tls-ca", metavar="FILE", help="mTLS: the cluster CA certificate")
    ap.add_argument("--tls-cert", metavar="FILE", help="mTLS: this daemon's certificate")
    ap.add_argument("--tls-key", metavar="FILE", help="mTLS: this daemon's private key")
    ap.add_argument("--join-token", metavar="TOKEN",
                    help="join a cluster with this token (visible in ps: prefer the env "
                         "ORCH_JOIN_TOKEN or --join-token-file)")
    ap.add_argument("--join-token-file", metavar="FILE", help="the join token, from a file")
    ap.add_argument("--controller", dest="controllers", metavar="ADDR:PORT", action="append",
                    default=None, help="a controller's gRPC address: to join through, to "
                                       "renew the certificate, to stream to (repeatable)")
    ap.add_argument("--insecure", action="store_const", const=True, default=None,
                    help="serve gRPC in plain text on an address other than loopback")
    ap.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    ap.add_argument("--log-format", choices=("json", "human", "auto"))


def load(cls: type[C], opts: argparse.Namespace, extra: tuple[str, ...] = ()) -> C:
    """``cls`` from ``--config`` with the common flags (and ``extra`` ones) applied."""
    values: dict[str, Any] = configfile.load_toml(opts.config) if opts.config else {}
    cfg = configfile.build(cls, values, where=opts.config or "")
    over: dict[str, Any] = {}
    for key in ("name", "bind", "advertise", "data_dir", "metrics_addr", "log_level", "log_format",
                *extra):
        if getattr(opts, key, None) is not None:
            over[key] = getattr(opts, key)
    if opts.join is not None:
        over["join"] = opts.join
    if opts.key is not None:
        over["keys"] = opts.key
    if opts.controllers is not None:
        over["controllers"] = opts.controllers
    if opts.insecure is not None:
        over["insecure"] = True
    token = join_token(opts)
    if token is not None:
        over["join_token"] = token
    if opts.join_token_file:
        over["join_token_file"] = opts.join_token_file
    if opts.tls_ca or opts.tls_cert or opts.tls_key:
        tls = cfg.tls
        over["tls"] = dataclasses.replace(tls, ca_file=opts.tls_ca or tls.ca_file,
                                          cert_file=opts.tls_cert or tls.cert_file,
                                          key_file=opts.tls_key or tls.key_file)
    gossip = cfg.gossip
    if opts.profile == "fast":
        gossip = GossipConfig.fast(label=gossip.label)
    if opts.label is not None:
        gossip = gossip.replace(label=opts.label)
    over["gossip"] = gossip
    return dataclasses.replace(cfg, **over)


def join_token(opts: argparse.Namespace, env: MutableMapping[str, str] | None = None) -> str | None:
    """The join token from ORCH_JOIN_TOKEN, or --join-token (visible to every user of the
    host in ps: a warning says so); None when none is given (--join-token-file sets
    ``join_token_file``, read when the daemon joins)."""
    env = os.environ if env is None else env
    if env.get("ORCH_JOIN_TOKEN"):
        return env["ORCH_JOIN_TOKEN"].strip()
    if opts.join_token:
        print("warning: --join-token is visible to every user of this host (ps); prefer "
              "ORCH_JOIN_TOKEN or --join-token-file", file=sys.stderr)
        return str(opts.join_token)
    return None


def refuse_plain_text(what: str, host: str, *, secured: bool, insecure: bool,
                      how: str) -> None:
    """Refuse to serve ``what`` on ``host`` unsecured unless it is loopback (ConfigError
    saying ``how`` to secure it), or unless the operator chose ``insecure`` (then a loud
    warning): nobody else on the network may drive a daemon by default."""
    if secured or is_loopback(host):
        return
    if not insecure:
        raise ConfigError(f"refusing to serve {what} on {host} in plain text: {how}, or set "
                          "insecure = true (--insecure) for a network you trust")
    log.warning("INSECURE: %s is served on %s in plain text: anyone who reaches it can drive "
                "this daemon", what, host, extra={"what": what, "host": host})


# --- the service manager --------------------------------------------------------------------


class Notifier:
    """sd_notify(3) without libsystemd: one datagram of ``KEY=VALUE`` lines to the AF_UNIX
    socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` names the abstract namespace).

    Every call is a no-op without that socket (not under systemd, or not ``Type=notify``).
    A message that cannot be sent is dropped (logged once): the service manager's
    trouble never stops the daemon.
    """

    def __init__(self, socket_path: str = "", watchdog_usec: int = 0) -> None:
        self.socket_path = socket_path
        self.watchdog_usec = watchdog_usec
        """``WatchdogSec=`` in microseconds; 0 when the watchdog is off."""
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environment(cls, env: MutableMapping[str, str] | None = None) -> Notifier:
        """From ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID``, which are removed
        from the environment so that the tasks an agent starts do not inherit them."""
        env = os.environ if env is None else env
        path = env.pop("NOTIFY_SOCKET", "")
        usec, pid = env.pop("WATCHDOG_USEC", ""), env.pop("WATCHDOG_PID", "")
        for_us = not pid or pid == str(os.getpid())
        return cls(path, int(usec) if usec.isdigit() and for_us else 0)

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half the timeout, as sd_watchdog_enabled(3)
        advises), or None when the watchdog is off."""
        if not self.socket_path or self.watchdog_usec <= 0:
            return None
        return self.watchdog_usec / 2_000_000

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; whether it went."""
        if not self.socket_path:
            return False
        path = self.socket_path
        addr = "\0" + path[1:] if path.startswith("@") else path
        data = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(data, addr)
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify the service manager", extra={
                    "socket": path, "error": str(e)})
            return False
        return True

    def ready(self, status: str) -> None:
        self.send(READY=1, STATUS=status)

    def reloading(self) -> None:
        # MONOTONIC_USEC: systemd >= 253 wants it with RELOADING=1; older ones ignore it
        self.send(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000,
                  STATUS="reloading the configuration")

    def stopping(self) -> None:
        self.send(STOPPING=1, STATUS="stopping")

    def watchdog(self) -> None:
        self.send(WATCHDOG=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# --- reloads ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Reload:
    """What a reload did: the changes applied while running, and the ones that wait."""

    applied: list[str] = field(default_factory=list)
    """One phrase per change applied ("log level info -> debug", "installed key 3q2+7w==")."""
    needs_restart: list[str] = field(default_factory=list)
    """Settings that changed in the file but take effect only after a restart."""


def changed_settings(old: Any, new: Any, live: Iterable[str] = ()) -> list[str]:
    """The fields of two configuration dataclasses that differ, except the live ones."""
    skip = set(LIVE_SETTINGS) | set(live)
    return [f.name for f in dataclasses.fields(old)
            if f.name not in skip and getattr(old, f.name) != getattr(new, f.name)]


def reload_keys(gossip: GossipNode | None, old: Sequence[str], new: Sequence[str],
                out: Reload) -> bool:
    """Make the gossip keyring ``new`` (the first key primary); whether the keys took effect.

    Encryption itself is switched on or off only by a restart of every member at once
    (a member that changes alone is cut off from the others), so that is refused.
    """
    if list(old) == list(new):
        return True
    if gossip is None or gossip.keyring is None or not new:
        out.needs_restart.append("keys (gossip encryption is switched on or off only by "
                                 "restarting every member)")
        return False
    try:
        out.applied.extend(gossip.set_keys(list(new)))
    except ConfigError as e:
        out.needs_restart.append(f"keys ({e}; the old keys stay)")
        return False
    return True


# --- running a daemon -------------------------------------------------------------------------


class Server(Protocol):
    """What ``run`` drives: the agent or the controller."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def describe(self) -> str:
        """One line for ``systemctl status`` (STATUS=)."""
        ...

    def reload(self, cfg: Any) -> Reload:
        """Apply what can change while running from a freshly loaded configuration."""
        ...


def run(prog: str, make: Callable[[], Server], *, reload: Callable[[], Any],
        log_level: str, log_format: str) -> int:
    """Run the server ``make()`` under uvloop until SIGTERM or SIGINT; SIGHUP reloads it with
    ``reload()`` (the configuration read again). Exit codes: 0 stopped, 2 configuration,
    1 cannot start."""
    logs.setup(log_level, log_format)
    notifier = Notifier.from_environment()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop, hup = asyncio.Event(), asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, hup.set)  # before start: its default kills
        watchdog = asyncio.create_task(_watchdog(notifier), name="watchdog")
        try:
            server = make()
            await server.start()
            freeze_startup_heap()
        except BaseException:
            watchdog.cancel()
            raise
        try:
            notifier.ready(server.describe())
            while True:
                await first_set(stop, hup)
                if stop.is_set():
                    break
                hup.clear()
                notifier.reloading()
                _reload(server, reload)
                notifier.ready(server.describe())
        finally:
            notifier.stopping()
            log.info("stopping", extra={"daemon": prog})
            try:
                await server.stop()
            except Exception:
                log.exception("stopping failed")
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog

    try:
        import uvloop

        uvloop.run(main())
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"{prog}: cannot start: {e}", file=sys.stderr)
        return 1
    finally:
        notifier.close()
    return 0


def freeze_startup_heap() -> None:
    """Move what start-up allocated (modules, descriptors, the server's long-lived state)
    out of the garbage collector's reach: full collections then scan only what came later,
    which halves the p99 of a ``/metrics`` scrape on a busy agent (``bench.metrics``)."""
    gc.collect()
    gc.freeze()


async def read_join_token(cfg: DaemonConfig, wait: float = 120.0) -> str:
    """The join token: ``join_token``, else the contents of ``join_token_file`` (waiting up to
    ``wait`` seconds for it to appear: on the first host it is made by the controller
    bootstrapping beside this daemon); "" when neither is set."""
    if cfg.join_token or not cfg.join_token_file:
        return cfg.join_token
    path = Path(cfg.join_token_file)
    for _ in range(max(1, int(wait))):  # once a second
        if await asyncio.to_thread(path.exists):
            break
        await asyncio.sleep(1.0)
    try:
        return (await asyncio.to_thread(path.read_text, encoding="utf-8")).strip()
    except OSError as e:
        raise ConfigError(f"cannot read the join token file: {e.strerror}",
                          where="join_token_file") from None


async def first_set(*events: asyncio.Event) -> None:
    """Wait until one of ``events`` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def _watchdog(notifier: Notifier) -> None:
    interval = notifier.watchdog_interval
    if interval is None:
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


def _reload(server: Server, load_config: Callable[[], Any]) -> None:
    """SIGHUP: read the configuration again and apply what can change; a bad file changes
    nothing (the daemon keeps running as it was)."""
    try:
        cfg = load_config()
    except ConfigError as e:
        log.error("reload failed: the configuration is unchanged", extra={"error": str(e)})
        return
    old_level = logging.getLevelName(logging.getLogger().level).lower()
    try:
        out = server.reload(cfg)
    except Exception:
        log.exception("reload failed")
        return
    try:
        logs.setup(cfg.log_level, cfg.log_format)
    except ValueError as e:
        out.needs_restart.append(f"log settings ({e})")
    else:
        if cfg.log_level != old_level:
            out.applied.insert(0, f"log level {old_level} -> {cfg.log_level}")
    log.info("configuration reloaded", extra={
        "changed": "; ".join(out.applied) or "nothing",
        **({"needs_restart": ", ".join(out.needs_restart)} if out.needs_restart else {})})
    log.debug("debug logging is on")
