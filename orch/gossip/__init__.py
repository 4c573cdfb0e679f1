"""Gossip membership: SWIM with Lifeguard, node state, encryption, a simulator.

config      GossipConfig (orch's LAN defaults beside memberlist's, every default explained)
messages    the messages and member statuses
codec       msgpack wire format, compound packets, the envelope (version, label, AES-GCM)
crypto      the keyring
suspicion   Lifeguard's suspicion timeout and local health awareness (pure)
broadcast   the retransmit-limited queue of updates
timers      a timer heap driven by the caller's clock
core        Membership: the sans-IO state machine
transport   the asyncio shell on real UDP and TCP sockets
sim         a discrete-event simulator running the same core for thousands of members
"""
