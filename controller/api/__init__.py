"""The controller's gRPC services: one module per service, errors mapped in one place.

controller_endpoint   ControllerService (orchctl): jobs, allocations, nodes, members, events
node_endpoint         NodeService: the agents' long-lived streams
errors                OrchError -> gRPC status (and back, for clients)
"""
