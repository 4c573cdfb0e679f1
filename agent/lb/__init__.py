"""The routing mesh: an L4 load balancer on every agent.

model      what the load balancer is told: services with their published port and endpoints
discovery  the cluster-wide endpoint table, built from every member's gossip node state
table      the agent's one copy of it, built once per change (mesh, DNS and templates read it)
(the proxy, policies and outlier detection live beside them)
"""
