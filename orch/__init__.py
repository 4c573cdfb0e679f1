"""Code shared by the agent, the controller and orchctl.

errors     the one error hierarchy
config     TOML files and flags onto the daemons' configuration dataclasses
logs       structured (JSON lines) and human log formats
protogen   regenerates ``orch.v1`` from ``protos/`` (``./run proto``)
v1         generated protobuf/gRPC code: never edit by hand
"""
