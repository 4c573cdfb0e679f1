"""The per-node daemon: gossip membership, task runtime, load balancer."""
