"""The one error hierarchy of orch, translated at the edges only.

::

    OrchError
    ├── ConfigError              # a bad file, flag or field: says where and what to do
    │   └── JobSpecError         #   a job file or submitted job: every problem at once
    ├── ProtocolError            # a bad gossip packet or stream message: dropped, never fatal
    │   ├── VersionError         #   from a peer speaking another protocol version
    │   ├── LabelError           #   from another cluster (label mismatch)
    │   └── DecryptError         #   no installed key opens it
    ├── ControllerRefusedError   # an agent refused a controller's desired set (another
    │                            #   cluster's, or of a store a restore replaced)
    ├── RuntimeDriverError       # wraps the engine's errors (aiodocker.DockerError)
    │   ├── StartError           #   a task could not start; ``recoverable`` or not
    │   ├── DriverUnavailableError  # the engine cannot be reached now (dockerd down)
    │   └── CgroupError          #   cgroups cannot hold this node's tasks (agent.runtime.cgroups)
    ├── NftError                 # nftables refused a kernel data plane transaction (agent.lb.libnft)
    ├── StoreError               # the controller's store failed; a failed commit wrote nothing
    │   ├── FencedError          #   etcd: this controller is no longer the leader (nothing written)
    │   ├── CommitInDoubtError   #   etcd went away mid-commit: the next load() shows if it landed
    │   └── EtcdError            #   an etcd call failed (controller.store.etcd_client)
    │       ├── EtcdUnavailable  #     no endpoint took it: nothing applied
    │       ├── EtcdRejected     #     etcd refused it: nothing applied
    │       └── EtcdInDoubt      #     no answer came: it may have been applied
    └── ApiError                 # a request that cannot be done now (FAILED_PRECONDITION)
        ├── NotLeaderError       #   carries the leader's address
        ├── NotFoundError        #   the named object does not exist (NOT_FOUND)
        ├── ConflictError        #   the job changed since the version the caller named (ABORTED)
        ├── AclError             #   a token operation that cannot be done (a second bootstrap)
        └── RequestError         #   a request that cannot be done as asked (also a ValueError)

The API maps these to gRPC status codes (``controller.api.errors``); any other exception
reaching it is a bug: INTERNAL, logged with its traceback. A test keeps this tree equal
to the classes that exist.
"""

from __future__ import annotations

from dataclasses import dataclass


class OrchError(Exception):
    """Root of every error orch raises on purpose."""


class ConfigError(OrchError):
    """A configuration file, flag or field is wrong.

    ``where`` names the file and field (``agent.toml: gossip.probe_interval``).
    """

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


@dataclass(frozen=True, slots=True)
class JobSpecProblem:
    """One thing wrong in a job: where (field path, line when known) and what."""

    path: str
    """``groups[0].tasks[1].resources.memory_mb``; empty for the file as a whole."""
    message: str
    """What is wrong and, where it helps, what to write instead."""
    line: int | None = None

    def render(self, source: str = "") -> str:
        """``web.yaml: groups[0].tasks[1].resources.memory_mb: must be > 0, got -5 (line 14)``."""
        parts = [p for p in (source, self.path) if p]
        text = ": ".join([*parts, self.message])
        return f"{text} (line {self.line})" if self.line is not None else text


class ControllerRefusedError(OrchError):
    """An agent refused a controller's desired set: the controller belongs to another cluster,
    or its store is older than a restore (``agent.cluster_pin``). Nothing was started or
    stopped; the agent ends the stream and tries the controllers it knows again."""


class JobSpecError(ConfigError):
    """A job (file or API submission) is invalid; ``problems`` lists every problem found.

    ``str(err)`` is one line per problem, each naming the source, the field and what is
    wrong, so a person fixes them all in one go.
    """

    def __init__(self, source: str, problems: list[JobSpecProblem]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(p.render(source) for p in self.problems) or "invalid job",
                         where=None)


class ProtocolError(OrchError):
    """A packet or stream frame from the network is not valid orch gossip, or a controller's
    message on an agent's stream does not follow the one before (the stream starts over).

    ``reason`` is a short stable label used for the drop counters.
    """

    reason = "decode"

    def __init__(self, message: str = "", *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class VersionError(ProtocolError):
    reason = "version"


class LabelError(ProtocolError):
    reason = "label"


class DecryptError(ProtocolError):
    reason = "decrypt"


class RuntimeDriverError(OrchError):
    """A task driver (Docker, process) failed to do what was asked."""


class StartError(RuntimeDriverError):
    """A task could not be started; ``recoverable`` says whether trying again may help
    (an image that cannot be pulled or a program that does not exist: no)."""

    def __init__(self, message: str, *, recoverable: bool) -> None:
        self.recoverable = recoverable
        super().__init__(message)


class DriverUnavailableError(RuntimeDriverError):
    """The driver's engine cannot be reached now (the Docker engine is down)."""


class StoreError(OrchError):
    """The controller's store could not do what was asked (disk, lock, damaged file).

    A commit that raised it wrote nothing, and the store stays usable; the
    exceptions are a disk that fails while syncing the commit and
    ``CommitInDoubtError`` (etcd gone mid-commit), whose outcome the next ``load``
    shows.
    """


class FencedError(StoreError):
    """This controller is no longer the leader: etcd refused the commit, nothing was written.

    ``key`` is the leader key, ``revision`` the revision this controller's election won,
    ``holder`` the key's value now (the new leader's name and address) or None when
    nobody leads yet.
    """

    def __init__(self, message: str, *, key: str, revision: int, holder: str | None) -> None:
        self.key = key
        self.revision = revision
        self.holder = holder
        super().__init__(message)


class CommitInDoubtError(StoreError):
    """etcd stopped answering while a commit was under way, and could not be asked since:
    the commit may have landed or not. The store settles it before its next call, so the
    next ``load`` shows which (the one exception to "a failed commit wrote nothing")."""


class ApiError(OrchError):
    """An API call failed; mapped to a gRPC status at the edge."""


class NotLeaderError(ApiError):
    """This controller is not the leader; ``leader`` is where to go instead."""

    def __init__(self, leader: str | None) -> None:
        self.leader = leader
        super().__init__(f"not the leader; the leader is {leader or 'unknown'}")


class NotFoundError(ApiError):
    """The named object does not exist."""


class ConflictError(ApiError):
    """The job changed since the version the caller based its change on."""


class AclError(ApiError):
    """A token operation that cannot be done (e.g. a second bootstrap)."""


class RequestError(ApiError, ValueError):
    """A request that cannot be done as asked: an ambiguous id, a stopped job to scale, a
    count below zero. The message says what to ask instead."""
