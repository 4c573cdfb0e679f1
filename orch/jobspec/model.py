"""Jobs, groups and tasks as frozen dataclasses: the types the scheduler and the agent use.

``protos/orch/v1/job.proto`` is the wire form; this module is the in-memory
form. Every default is written once, here, beside its meaning; a zero value on
the wire means "not set" and takes the default (``count`` has presence, so 0
replicas is a real value). Durations are seconds as floats.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.duration_pb2 import Duration

from orch.templates import uses
from orch.v1 import job_pb2
from orch.vocab import DEFAULT_NAMESPACE, JOB_TYPE, namespace_of


@dataclass(frozen=True, slots=True, kw_only=True)
class Resources:
    cpu_millicores: int = 100
    """CPU shares the task asks for; 1000 is one core."""
    memory_mb: int = 64
    """Memory limit in MiB (the container is killed above it)."""

    def __add__(self, other: Resources) -> Resources:
        return Resources(cpu_millicores=self.cpu_millicores + other.cpu_millicores,
                         memory_mb=self.memory_mb + other.memory_mb)


@dataclass(frozen=True, slots=True, kw_only=True)
class Port:
    label: str
    static: int = 0
    """Host port; 0 means dynamic (chosen by the scheduler)."""
    to: int = 0
    """Port inside the task; 0 means the same as the host port."""
    protocol: str = "tcp"


@dataclass(frozen=True, slots=True, kw_only=True)
class Network:
    mode: str = "bridge"
    """bridge (ports mapped) or host (the task shares the host's network)."""
    ports: tuple[Port, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckRestart:
    """Restart the task when its check fails ``limit`` times in a row (Nomad's check_restart);
    the restart counts against the group's restart policy."""

    limit: int = 0
    """Consecutive failing results that restart the task; 0: never."""
    grace: float = 1.0
    """Seconds after the task (re)starts during which results are not counted."""
    ignore_warnings: bool = False
    """Count a warning (HTTP 429, an exec check's exit code 1) as a pass."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnect:
    """A group's allocations while their node is cut off from the controllers (Nomad's
    disconnect block)."""

    stop_after: float = 0.0
    """Seconds without any controller after which the agent stops the tasks itself (0: never),
    so that a copy the controller placed elsewhere never runs beside them for longer."""
    lost_after: float = 0.0
    """Seconds the allocation stays unknown before it is lost and replaced (0: at once, when
    its node is marked down)."""
    replace: bool = False
    """Place a replacement at once while the allocation is unknown."""
    reconcile: str = "best_score"
    """When the original comes back beside its replacement, which one stays: best_score (the
    one on the node that scores best: the replacement, as placed later), keep_original,
    keep_replacement or longest_running."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    type: str
    """tcp, http or exec."""
    name: str = ""
    port: str = ""
    """A port label of the group's network (tcp, http)."""
    path: str = "/"
    method: str = "GET"
    status_min: int = 200
    status_max: int = 399
    """http: healthy when status_min <= status <= status_max."""
    command: str = ""
    args: tuple[str, ...] = ()
    interval: float = 10.0
    timeout: float = 2.0
    healthy_threshold: int = 1
    """Consecutive passes before the check turns healthy."""
    unhealthy_threshold: int = 3
    """Consecutive failures before the check turns unhealthy."""
    check_restart: CheckRestart | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    name: str
    port: str
    """A port label of the group's network."""
    published_port: int = 0
    """The load balancer listens on this port on every node; 0 = not published."""
    protocol: str = "tcp"
    check: Check | None = None
    tags: tuple[str, ...] = ()
    lb_policy: str = "round_robin"
    """round_robin, random, least_conn, p2c or maglev."""
    task: str = ""
    """The task that serves it; empty = the group's first task."""
    proxy_protocol: bool = False
    """The load balancer starts each connection with a PROXY protocol v2 header (client address)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Volume:
    """A volume a group asks for (``volumes: {<name>: ...}``); its tasks mount it by name."""

    type: str = "host"
    """host: a folder the node declares in agent.toml (``[[host_volume]]``); the group is
    placed only where it exists. docker: a Docker named volume on the node."""
    source: str = ""
    """The host volume's or Docker volume's name (set to the volume's own name when empty)."""
    read_only: bool = False
    """Every mount of it is read-only."""
    per_alloc: bool = False
    """docker: each allocation its own volume, ``<source>-<index>``."""

    def source_for(self, index: int) -> str:
        """The name of the volume an allocation with this ``index`` mounts."""
        return f"{self.source}-{index}" if self.per_alloc else self.source


@dataclass(frozen=True, slots=True, kw_only=True)
class VolumeMount:
    volume: str
    """A name in the group's ``volumes``."""
    destination: str
    """docker: an absolute path in the container; process: a path in the task's folder."""
    read_only: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Task:
    name: str
    driver: str = "docker"
    image: str = ""
    command: str = ""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str = ""
    resources: Resources = field(default_factory=Resources)
    checks: tuple[Check, ...] = ()
    kill_timeout: float = 5.0
    """Seconds between kill_signal and SIGKILL."""
    kill_signal: str = "SIGTERM"
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    privileged: bool = False
    volume_mounts: tuple[VolumeMount, ...] = ()
    secrets: tuple[SecretRef, ...] = ()
    templates: tuple[Template, ...] = ()

    @property
    def secret_names(self) -> frozenset[str]:
        """Every secret the task reads: its files and what its templates call."""
        names = {s.name for s in self.secrets}
        for t in self.templates:
            names |= uses(t.data).secrets
        return frozenset(names)


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretRef:
    name: str
    file: str = ""
    """Its file in the task's secrets/ folder (the name when empty)."""
    env: str = ""
    """Also this environment variable, when asked."""

    @property
    def file_name(self) -> str:
        return self.file or self.name


@dataclass(frozen=True, slots=True, kw_only=True)
class Template:
    destination: str
    """``secrets/<file>`` or ``local/<path>``, in the task's folder."""
    data: str
    change_mode: str = "restart"
    """restart, signal or noop: what a new rendering does to the running task."""
    change_signal: str = "SIGHUP"
    perms: str = ""
    """Octal file mode; empty: 0400 (owned by the task's user), 0444 in a container."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartPolicy:
    attempts: int = 2
    """Restarts allowed within ``interval``."""
    interval: float = 1800.0
    delay: float = 15.0
    """Seconds to wait before each restart."""
    mode: str = "fail"
    """fail: give up when attempts are spent; delay: wait for the interval to pass."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReschedulePolicy:
    attempts: int = 0
    """Reschedules allowed within ``interval`` (ignored when ``unlimited``)."""
    interval: float = 0.0
    delay: float = 30.0
    delay_function: str = "exponential"
    """constant, exponential or fibonacci."""
    max_delay: float = 3600.0
    unlimited: bool = True


BATCH_RESCHEDULE = ReschedulePolicy(attempts=1, interval=86400.0, delay=5.0,
                                    delay_function="constant", unlimited=False)
"""Batch jobs' defaults (Nomad's): one more try within a day, 5 s later."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateStrategy:
    max_parallel: int = 1
    min_healthy_time: float = 10.0
    healthy_deadline: float = 300.0
    progress_deadline: float = 600.0
    auto_revert: bool = False
    canary: int = 0
    auto_promote: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Constraint:
    attribute: str = ""
    """${node.class}, ${attr.kernel.name}, ${meta.rack}, ... (empty for distinct_hosts)."""
    operator: str = "="
    value: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Affinity:
    attribute: str
    operator: str = "="
    value: str = ""
    weight: int = 50
    """-100..100; negative weights repel."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SpreadTarget:
    value: str
    percent: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Spread:
    attribute: str
    weight: int = 50
    targets: tuple[SpreadTarget, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Scaling:
    min: int = 0
    max: int = 0
    metric: str = ""
    target: float = 0.0
    cooldown: float = 60.0
    enabled: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Group:
    name: str
    count: int = 1
    tasks: tuple[Task, ...] = ()
    constraints: tuple[Constraint, ...] = ()
    affinities: tuple[Affinity, ...] = ()
    spreads: tuple[Spread, ...] = ()
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    reschedule: ReschedulePolicy = field(default_factory=ReschedulePolicy)
    update: UpdateStrategy = field(default_factory=UpdateStrategy)
    network: Network = field(default_factory=Network)
    services: tuple[Service, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    scaling: Scaling | None = None
    shutdown_delay: float = 0.0
    """Seconds between an allocation leaving the load balancer and its tasks' stop signal,
    so that connections in flight finish (scale-downs, updates, stops)."""
    disconnect: Disconnect | None = None
    volumes: Mapping[str, Volume] = field(default_factory=dict)
    """Name -> the volume its tasks mount by that name."""

    @property
    def resources(self) -> Resources:
        """What one allocation of the group asks for: the sum over its tasks."""
        total = Resources(cpu_millicores=0, memory_mb=0)
        for t in self.tasks:
            total = total + t.resources
        return total


@dataclass(frozen=True, slots=True, kw_only=True)
class Periodic:
    cron: str
    """When to launch a child: a cron expression (``orch.jobspec.periodic``)."""
    time_zone: str = "UTC"
    """The IANA time zone the expression is read in."""
    prohibit_overlap: bool = False
    """Skip a slot while an earlier child still runs."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Parameterized:
    meta_required: tuple[str, ...] = ()
    meta_optional: tuple[str, ...] = ()
    payload: str = "optional"
    """optional, required or forbidden."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    name: str
    type: str = "service"
    priority: int = 50
    datacenters: tuple[str, ...] = ()
    region: str = ""
    meta: Mapping[str, str] = field(default_factory=dict)
    groups: tuple[Group, ...] = ()
    constraints: tuple[Constraint, ...] = ()
    affinities: tuple[Affinity, ...] = ()
    spreads: tuple[Spread, ...] = ()
    namespace: str = DEFAULT_NAMESPACE
    version: int = 0
    stop: bool = False
    periodic: Periodic | None = None
    parameterized: Parameterized | None = None
    """A periodic or parameterized job is a parent: never placed itself, it has children."""
    parent: str = ""
    """A child's parent (set by the controller)."""

    @property
    def is_parent(self) -> bool:
        return self.periodic is not None or self.parameterized is not None


# --- protobuf <-> model -------------------------------------------------------------------


def _secs(d: Duration, default: float) -> float:
    return d.seconds + d.nanos / 1e9 if (d.seconds or d.nanos) else default


def _dur(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def _or(value: Any, default: Any) -> Any:
    return value if value else default


def _resources(pb: job_pb2.Resources) -> Resources:
    d = Resources()
    return Resources(cpu_millicores=_or(pb.cpu_millicores, d.cpu_millicores),
                     memory_mb=_or(pb.memory_mb, d.memory_mb))


def _check(pb: job_pb2.Check) -> Check:
    d = Check(type="")
    return Check(
        type=pb.type, name=pb.name, port=pb.port, path=_or(pb.path, d.path),
        method=_or(pb.method, d.method), status_min=_or(pb.status_min, d.status_min),
        status_max=_or(pb.status_max, d.status_max), command=pb.command, args=tuple(pb.args),
        interval=_secs(pb.interval, d.interval), timeout=_secs(pb.timeout, d.timeout),
        healthy_threshold=_or(pb.healthy_threshold, d.healthy_threshold),
        unhealthy_threshold=_or(pb.unhealthy_threshold, d.unhealthy_threshold),
        check_restart=CheckRestart(
            limit=pb.check_restart.limit,
            grace=_secs(pb.check_restart.grace, CheckRestart().grace),
            ignore_warnings=pb.check_restart.ignore_warnings)
        if pb.HasField("check_restart") else None,
    )


def _task(pb: job_pb2.Task) -> Task:
    d = Task(name="")
    return Task(
        name=pb.name, driver=_or(pb.driver, d.driver), image=pb.image, command=pb.command,
        args=tuple(pb.args), env=dict(pb.env), workdir=pb.workdir,
        resources=_resources(pb.resources), checks=tuple(_check(c) for c in pb.checks),
        kill_timeout=_secs(pb.kill_timeout, d.kill_timeout),
        kill_signal=_or(pb.kill_signal, d.kill_signal), user=pb.user, labels=dict(pb.labels),
        privileged=pb.privileged,
        secrets=tuple(SecretRef(name=s.name, file=s.file, env=s.env) for s in pb.secrets),
        templates=tuple(Template(destination=t.destination, data=t.data,
                                 change_mode=_or(t.change_mode, "restart"),
                                 change_signal=_or(t.change_signal, "SIGHUP"), perms=t.perms)
                        for t in pb.templates),
        volume_mounts=tuple(VolumeMount(volume=m.volume, destination=m.destination,
                                        read_only=m.read_only) for m in pb.volume_mounts),
    )


def _volume(name: str, pb: job_pb2.Volume) -> Volume:
    return Volume(type=_or(pb.type, "host"), source=_or(pb.source, name),
                  read_only=pb.read_only, per_alloc=pb.per_alloc)


def _constraint(pb: job_pb2.Constraint) -> Constraint:
    return Constraint(attribute=pb.attribute, operator=_or(pb.operator, "="), value=pb.value)


def _affinity(pb: job_pb2.Affinity) -> Affinity:
    return Affinity(attribute=pb.attribute, operator=_or(pb.operator, "="), value=pb.value,
                    weight=_or(pb.weight, 50))


def _spread(pb: job_pb2.Spread) -> Spread:
    return Spread(attribute=pb.attribute, weight=_or(pb.weight, 50),
                  targets=tuple(SpreadTarget(value=t.value, percent=t.percent) for t in pb.targets))


def _update(pb: job_pb2.UpdateStrategy, base: UpdateStrategy) -> UpdateStrategy:
    return UpdateStrategy(
        max_parallel=_or(pb.max_parallel, base.max_parallel),
        min_healthy_time=_secs(pb.min_healthy_time, base.min_healthy_time),
        healthy_deadline=_secs(pb.healthy_deadline, base.healthy_deadline),
        progress_deadline=_secs(pb.progress_deadline, base.progress_deadline),
        auto_revert=pb.auto_revert or base.auto_revert, canary=_or(pb.canary, base.canary),
        auto_promote=pb.auto_promote or base.auto_promote,
    )


def _group(pb: job_pb2.TaskGroup, job_update: UpdateStrategy, *, batch: bool = False) -> Group:
    r, rs = RestartPolicy(), BATCH_RESCHEDULE if batch else ReschedulePolicy()
    restart = RestartPolicy(
        attempts=_or(pb.restart.attempts, r.attempts),
        interval=_secs(pb.restart.interval, r.interval),
        delay=_secs(pb.restart.delay, r.delay), mode=_or(pb.restart.mode, r.mode))
    unlimited = pb.reschedule.unlimited or (not batch and not pb.reschedule.attempts)
    reschedule = ReschedulePolicy(
        attempts=_or(pb.reschedule.attempts, rs.attempts),
        interval=_secs(pb.reschedule.interval, rs.interval),
        delay=_secs(pb.reschedule.delay, rs.delay),
        delay_function=_or(pb.reschedule.delay_function, rs.delay_function),
        max_delay=_secs(pb.reschedule.max_delay, rs.max_delay), unlimited=unlimited)
    scaling = None
    if pb.HasField("scaling"):
        s = pb.scaling
        scaling = Scaling(min=s.min, max=s.max, metric=s.metric, target=s.target,
                          cooldown=_secs(s.cooldown, Scaling().cooldown), enabled=s.enabled)
    return Group(
        name=pb.name, count=pb.count if pb.HasField("count") else 1,
        tasks=tuple(_task(t) for t in pb.tasks),
        constraints=tuple(_constraint(c) for c in pb.constraints),
        affinities=tuple(_affinity(a) for a in pb.affinities),
        spreads=tuple(_spread(s) for s in pb.spreads),
        restart=restart, reschedule=reschedule, update=_update(pb.update, job_update),
        network=Network(mode=_or(pb.network.mode, "bridge"), ports=tuple(
            Port(label=p.label, static=p.static, to=p.to, protocol=_or(p.protocol, "tcp"))
            for p in pb.network.ports)),
        services=tuple(
            Service(name=s.name, port=s.port, published_port=s.published_port,
                    protocol=_or(s.protocol, "tcp"),
                    check=_check(s.check) if s.HasField("check") else None, tags=tuple(s.tags),
                    lb_policy=_or(s.lb_policy, "round_robin"), task=s.task,
                    proxy_protocol=s.proxy_protocol)
            for s in pb.services),
        meta=dict(pb.meta), scaling=scaling, shutdown_delay=_secs(pb.shutdown_delay, 0.0),
        volumes={name: _volume(name, v) for name, v in sorted(pb.volumes.items())},
        disconnect=Disconnect(
            stop_after=_secs(pb.disconnect.stop_after, 0.0),
            lost_after=_secs(pb.disconnect.lost_after, 0.0), replace=pb.disconnect.replace,
            reconcile=_or(pb.disconnect.reconcile, Disconnect().reconcile))
        if pb.HasField("disconnect") else None,
    )


def job_from_proto(pb: job_pb2.Job) -> Job:
    """The model of a (validated) Job message, with every unset field at its default."""
    job_update = _update(pb.update, UpdateStrategy())
    batch = pb.type == job_pb2.JOB_TYPE_BATCH
    return Job(
        name=pb.name, type=JOB_TYPE.word(pb.type),
        priority=_or(pb.priority, 50), datacenters=tuple(pb.datacenters), region=pb.region,
        meta=dict(pb.meta), groups=tuple(_group(g, job_update, batch=batch) for g in pb.groups),
        constraints=tuple(_constraint(c) for c in pb.constraints),
        affinities=tuple(_affinity(a) for a in pb.affinities),
        spreads=tuple(_spread(s) for s in pb.spreads),
        namespace=namespace_of(pb.namespace), version=pb.version, stop=pb.stop,
        periodic=Periodic(cron=pb.periodic.cron, time_zone=pb.periodic.time_zone or "UTC",
                          prohibit_overlap=pb.periodic.prohibit_overlap)
        if pb.HasField("periodic") else None,
        parameterized=Parameterized(meta_required=tuple(pb.parameterized.meta_required),
                                    meta_optional=tuple(pb.parameterized.meta_optional),
                                    payload=pb.parameterized.payload or "optional")
        if pb.HasField("parameterized") else None,
        parent=pb.parent,
    )


def _check_pb(c: Check) -> job_pb2.Check:
    pb = job_pb2.Check(
        type=c.type, name=c.name, port=c.port, path=c.path, method=c.method,
        status_min=c.status_min, status_max=c.status_max, command=c.command, args=c.args,
        interval=_dur(c.interval), timeout=_dur(c.timeout),
        healthy_threshold=c.healthy_threshold, unhealthy_threshold=c.unhealthy_threshold)
    if c.check_restart is not None:
        r = c.check_restart
        pb.check_restart.CopyFrom(job_pb2.CheckRestart(limit=r.limit, grace=_dur(r.grace),
                                                       ignore_warnings=r.ignore_warnings))
    return pb


def _update_pb(u: UpdateStrategy) -> job_pb2.UpdateStrategy:
    return job_pb2.UpdateStrategy(
        max_parallel=u.max_parallel, min_healthy_time=_dur(u.min_healthy_time),
        healthy_deadline=_dur(u.healthy_deadline), progress_deadline=_dur(u.progress_deadline),
        auto_revert=u.auto_revert, canary=u.canary, auto_promote=u.auto_promote)


def group_to_proto(g: Group) -> job_pb2.TaskGroup:
    """The wire form of a group, every default written out (as stored with an allocation)."""
    pb = job_pb2.TaskGroup(
        name=g.name, count=g.count, meta=dict(g.meta),
        constraints=[job_pb2.Constraint(attribute=c.attribute, operator=c.operator, value=c.value)
                     for c in g.constraints],
        affinities=[job_pb2.Affinity(attribute=a.attribute, operator=a.operator, value=a.value,
                                     weight=a.weight) for a in g.affinities],
        spreads=[job_pb2.Spread(attribute=s.attribute, weight=s.weight, targets=[
            job_pb2.SpreadTarget(value=t.value, percent=t.percent) for t in s.targets])
            for s in g.spreads],
        restart=job_pb2.RestartPolicy(
            attempts=g.restart.attempts, interval=_dur(g.restart.interval),
            delay=_dur(g.restart.delay), mode=g.restart.mode),
        reschedule=job_pb2.ReschedulePolicy(
            attempts=g.reschedule.attempts, interval=_dur(g.reschedule.interval),
            delay=_dur(g.reschedule.delay), delay_function=g.reschedule.delay_function,
            max_delay=_dur(g.reschedule.max_delay), unlimited=g.reschedule.unlimited),
        update=_update_pb(g.update),
        network=job_pb2.Network(mode=g.network.mode, ports=[
            job_pb2.Port(label=p.label, static=p.static, to=p.to, protocol=p.protocol)
            for p in g.network.ports]),
        tasks=[job_pb2.Task(
            name=t.name, driver=t.driver, image=t.image, command=t.command, args=t.args,
            env=dict(t.env), workdir=t.workdir,
            resources=job_pb2.Resources(cpu_millicores=t.resources.cpu_millicores,
                                        memory_mb=t.resources.memory_mb),
            checks=[_check_pb(c) for c in t.checks], kill_timeout=_dur(t.kill_timeout),
            kill_signal=t.kill_signal, user=t.user, labels=dict(t.labels),
            privileged=t.privileged,
            volume_mounts=[job_pb2.VolumeMount(volume=m.volume, destination=m.destination,
                                               read_only=m.read_only) for m in t.volume_mounts],
            secrets=[job_pb2.SecretRef(name=s.name, file=s.file, env=s.env) for s in t.secrets],
            templates=[job_pb2.Template(destination=x.destination, data=x.data,
                                        change_mode=x.change_mode,
                                        change_signal=x.change_signal, perms=x.perms)
                       for x in t.templates]) for t in g.tasks],
        volumes={name: job_pb2.Volume(type=v.type, source=v.source, read_only=v.read_only,
                                      per_alloc=v.per_alloc) for name, v in g.volumes.items()},
        services=[job_pb2.Service(
            name=s.name, port=s.port, published_port=s.published_port, protocol=s.protocol,
            check=_check_pb(s.check) if s.check else None, tags=s.tags,
            lb_policy=s.lb_policy, task=s.task, proxy_protocol=s.proxy_protocol)
            for s in g.services],
    )
    if g.shutdown_delay:
        pb.shutdown_delay.CopyFrom(_dur(g.shutdown_delay))
    if g.disconnect is not None:
        d = g.disconnect
        pb.disconnect.CopyFrom(job_pb2.Disconnect(
            stop_after=_dur(d.stop_after), lost_after=_dur(d.lost_after), replace=d.replace,
            reconcile=d.reconcile))
    if g.scaling is not None:
        s = g.scaling
        pb.scaling.CopyFrom(job_pb2.Scaling(min=s.min, max=s.max, metric=s.metric, target=s.target,
                                            cooldown=_dur(s.cooldown), enabled=s.enabled))
    return pb


def job_to_proto(job: Job) -> job_pb2.Job:
    """The wire form of a job, every default written out."""
    return job_pb2.Job(
        name=job.name, type=JOB_TYPE.value(job.type), priority=job.priority,
        datacenters=job.datacenters, region=job.region, meta=dict(job.meta),
        groups=[group_to_proto(g) for g in job.groups],
        constraints=[job_pb2.Constraint(attribute=c.attribute, operator=c.operator, value=c.value)
                     for c in job.constraints],
        affinities=[job_pb2.Affinity(attribute=a.attribute, operator=a.operator, value=a.value,
                                     weight=a.weight) for a in job.affinities],
        spreads=[job_pb2.Spread(attribute=s.attribute, weight=s.weight, targets=[
            job_pb2.SpreadTarget(value=t.value, percent=t.percent) for t in s.targets])
            for s in job.spreads],
        namespace=job.namespace, version=job.version, stop=job.stop, parent=job.parent,
        periodic=job_pb2.Periodic(cron=job.periodic.cron, time_zone=job.periodic.time_zone,
                                  prohibit_overlap=job.periodic.prohibit_overlap)
        if job.periodic is not None else None,
        parameterized=job_pb2.Parameterized(meta_required=job.parameterized.meta_required,
                                            meta_optional=job.parameterized.meta_optional,
                                            payload=job.parameterized.payload)
        if job.parameterized is not None else None,
    )


def group_from_proto(pb: job_pb2.TaskGroup) -> Group:
    """The model of a group as stored with an allocation (defaults already written out)."""
    return _group(pb, UpdateStrategy())
