"""The agent's DNS server: service, node and allocation names answered from the same
trusted, health-aware endpoint table as the load balancer (see docs/discovery.md)."""
