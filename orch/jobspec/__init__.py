"""The job specification as orch's own types (``model``), made from protobuf messages.

``model``  frozen dataclasses for jobs, groups and tasks, every default written once;
           ``job_from_proto``/``job_to_proto`` convert at the RPC edge.
"""
