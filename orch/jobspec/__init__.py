"""The job specification: job files (YAML, JSON) onto ``orch.v1.job_pb2.Job``, checked, and
orch's own types for it.

``load``        ``load_job_file``/``parse_job`` (file or text -> valid Job message, or one
                JobSpecError listing every problem), ``check_job`` for API messages
``document``    YAML/JSON text -> a tree that remembers lines and the text of every scalar
``decode``      that tree -> protobuf messages, driven by the proto descriptors
``validate``    semantic checks of a Job message, with field paths
``constraints`` the constraint language (operators, targets, versions) shared with the scheduler
``durations``   "30s", "1m30s" <-> nanoseconds
``model``       frozen dataclasses for jobs, groups and tasks, every default written once;
                ``job_from_proto``/``job_to_proto`` convert at the RPC edge.
"""

from orch.errors import JobSpecError, JobSpecProblem
from orch.jobspec.load import check_job, load_job, load_job_file, parse_job

__all__ = ["JobSpecError", "JobSpecProblem", "check_job", "load_job", "load_job_file",
           "parse_job"]
