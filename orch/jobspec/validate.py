"""Semantic checks of a Job message: every problem, each with its field path.

Run on every job however it arrives (a file through ``orchctl``, a message on
the API), after the file reader has caught what is structurally wrong. Zero
means "not set" for most proto3 fields, so ranges here reject what can never
be meant (negative sizes, unknown names, dangling references between fields).
"""

from __future__ import annotations

import difflib
import re
import signal
from collections import Counter
from collections.abc import Iterable

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from orch.errors import JobSpecProblem
from orch.jobspec import constraints as cl
from orch.jobspec import dispatch, periodic
from orch.templates import TemplateProblem, uses
from orch.v1 import job_pb2

NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
"""Job, namespace and group names: they appear in allocation names and DNS-like places."""
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
PORT_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
SERVICE_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?\Z")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
SECRET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
"""Secret names and the file names they take: one path segment, never '.' or '..'."""
DESTINATION = re.compile(r"(secrets/[A-Za-z0-9][A-Za-z0-9_.-]*|"
                         r"local/[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*)\Z")
"""Where a template may write: a file of the task's secrets/ folder, or under local/."""
CHANGE_MODES = ("restart", "signal", "noop")
PERMS = re.compile(r"0?[0-7]{3}\Z")
VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
"""A group's volume names, host volume names (agent.toml) and Docker volume names (which
need two characters at least)."""
MAX_NAME = 63
MAX_COUNT = 10_000
"""Allocations per group (and a scaling block's max)."""
MAX_GROUPS = 100
MAX_TASKS = 50
"""Tasks per group."""
MAX_ITEMS = 1_000
"""Entries in any other list or map of a job (ports, services, env, args, constraints...)."""
MAX_STRING = 64 * 1024
"""Characters in any one string of a job (a command line, an env value, a template)."""

DRIVERS = ("docker", "process")
NETWORK_MODES = ("bridge", "host")
PROTOCOLS = ("tcp", "udp")
LB_POLICIES = ("round_robin", "random", "least_conn", "p2c", "maglev")
CHECK_TYPES = ("tcp", "http", "exec")
RESTART_MODES = ("fail", "delay")
DELAY_FUNCTIONS = ("constant", "exponential", "fibonacci")
RECONCILE = ("best_score", "keep_original", "keep_replacement", "longest_running")
MAX_CHECK_RESTART = 1_000
"""check_restart.limit above this is a mistake (a check that fails for hours restarts it)."""
SCALING_METRICS = ("cpu", "connections", "requests")
VOLUME_TYPES = ("host", "docker")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
SIGNALS = frozenset(s.name for s in signal.Signals)


def validate_job(job: job_pb2.Job) -> list[JobSpecProblem]:
    """Every problem in ``job``, in field order; empty when the job is valid."""
    v = _Validator()
    v.sizes("", job)
    if v.problems:  # a job past the size limits is not worth reading further
        return v.problems
    v.job(job)
    return v.problems


def _secs(d: Duration) -> float:
    return d.seconds + d.nanos / 1e9


def _one_of(value: str, choices: Iterable[str]) -> str:
    return f"must be one of {', '.join(choices)}, got {value!r}"


class _Validator:
    def __init__(self) -> None:
        self.problems: list[JobSpecProblem] = []

    def sizes(self, at: str, msg: Message) -> None:
        """Lists, maps and strings within the limits, everywhere in ``msg``."""
        for fd, value in msg.ListFields():
            path = f"{at}.{fd.name}" if at else fd.name
            repeated = fd.is_repeated
            if repeated and len(value) > MAX_ITEMS:
                self.bad(path, f"at most {MAX_ITEMS:,} entries, got {len(value):,}")
                continue
            is_map = repeated and fd.message_type is not None and \
                fd.message_type.GetOptions().map_entry
            items = [*value.keys(), *value.values()] if is_map else \
                list(value) if repeated else [value]
            for i, item in enumerate(items):
                where = f"{path}[{i}]" if repeated else path
                if isinstance(item, Message):
                    self.sizes(where, item)
                elif isinstance(item, str) and len(item) > MAX_STRING:
                    self.bad(where, f"at most {MAX_STRING:,} characters, got {len(item):,}")

    def bad(self, path: str, message: str) -> None:
        self.problems.append(JobSpecProblem(path, message))

    def name(self, path: str, value: str, rx: re.Pattern[str], what: str) -> None:
        if not value:
            self.bad(path, "is required")
        elif len(value) > MAX_NAME:
            self.bad(path, f"must be at most {MAX_NAME} characters, got {len(value)}")
        elif not rx.match(value):
            self.bad(path, f"must be {what}, got {value!r}")

    def choice(self, path: str, value: str, choices: tuple[str, ...]) -> None:
        if value and value not in choices:
            self.bad(path, _one_of(value, choices))

    def unique(self, path: str, names: list[str], what: str) -> None:
        for name, n in Counter(names).items():
            if name and n > 1:
                self.bad(path, f"{what} {name!r} is used {n} times; names must be unique")

    # --- job ------------------------------------------------------------------------------

    def job(self, job: job_pb2.Job) -> None:
        self.name("name", job.name, NAME, "lower case letters, digits, '-' and '_', "
                  "starting with a letter or digit")
        if job.namespace:
            self.name("namespace", job.namespace, NAME, "lower case letters, digits, '-' and '_'")
        if job.priority and not 1 <= job.priority <= 100:
            self.bad("priority", f"must be between 1 and 100, got {job.priority}")
        for i, dc in enumerate(job.datacenters):
            if not dc.strip():
                self.bad(f"datacenters[{i}]", "must not be empty")
        self.unique("datacenters", list(job.datacenters), "datacenter")
        kind = job.type
        system = kind == job_pb2.JOB_TYPE_SYSTEM
        batch = kind == job_pb2.JOB_TYPE_BATCH
        self.constraints("constraints", job.constraints)
        self.affinities("affinities", job.affinities)
        self.spreads("spreads", job.spreads)
        if system and job.affinities:
            self.bad("affinities", "system jobs run on every eligible node; use constraints")
        if system and job.spreads:
            self.bad("spreads", "system jobs run on every eligible node; spread does not apply")
        if job.HasField("update"):
            if batch:
                self.bad("update", "batch jobs run to completion and are not rolled; remove it")
            else:
                self.update("update", job.update, None)
        self.parent_job(job)
        if not job.groups:
            self.bad("groups", "a job needs at least one group")
        elif len(job.groups) > MAX_GROUPS:
            self.bad("groups", f"at most {MAX_GROUPS} groups per job, got {len(job.groups)}")
        self.unique("groups", [g.name for g in job.groups], "group")
        published: dict[int, str] = {}
        for i, g in enumerate(job.groups):
            self.group(f"groups[{i}]", g, job, published)

    def parent_job(self, job: job_pb2.Job) -> None:
        """A periodic or parameterized job: a batch job, one or the other, with a schedule
        that parses in a zone that exists, or the inputs it declares."""
        if job.parent or job.payload:
            self.bad("parent" if job.parent else "payload",
                     "is set by the controller on the children of periodic and parameterized "
                     "jobs; remove it")
        both = job.HasField("periodic") and job.HasField("parameterized")
        if both:
            self.bad("parameterized", "a job is periodic or parameterized, not both")
        for kind in ("periodic", "parameterized"):
            if job.HasField(kind) and job.type != job_pb2.JOB_TYPE_BATCH:
                self.bad(kind, f"only batch jobs can be {kind} (set type: batch)")
        if job.HasField("periodic"):
            p = job.periodic
            why = periodic.cron_problem(p.cron)
            if why:
                self.bad("periodic.cron", why)
            try:
                periodic.zone(p.time_zone)
            except ValueError as e:
                self.bad("periodic.time_zone", str(e))
        if job.HasField("parameterized"):
            p2 = job.parameterized
            self.choice("parameterized.payload", p2.payload, dispatch.PAYLOAD_MODES)
            keys = [*p2.meta_required, *p2.meta_optional]
            if len(keys) > dispatch.MAX_META:
                self.bad("parameterized", f"at most {dispatch.MAX_META} meta keys, got {len(keys)}")
            for field_ in ("meta_required", "meta_optional"):
                for i, k in enumerate(getattr(p2, field_)):
                    if not dispatch.META_KEY.match(k):
                        self.bad(f"parameterized.{field_}[{i}]",
                                 f"must be a meta key (letters, digits, '_', '.', '-', starting "
                                 f"with a letter or '_'), got {k!r}")
            self.unique("parameterized", keys, "meta key")

    # --- group ----------------------------------------------------------------------------

    def group(self, at: str, g: job_pb2.TaskGroup, job: job_pb2.Job,
              published: dict[int, str]) -> None:
        system = job.type == job_pb2.JOB_TYPE_SYSTEM
        batch = job.type == job_pb2.JOB_TYPE_BATCH
        self.name(f"{at}.name", g.name, NAME, "lower case letters, digits, '-' and '_'")
        count = g.count if g.HasField("count") else 1
        if count < 0:
            self.bad(f"{at}.count", f"must be >= 0, got {count}")
        elif count > MAX_COUNT:
            self.bad(f"{at}.count", f"must be <= {MAX_COUNT:,}, got {count:,}")
        if system and g.HasField("count") and count > 1:
            self.bad(f"{at}.count", f"system jobs run one allocation per eligible node; "
                                    f"remove count (got {count})")
        if not g.tasks:
            self.bad(f"{at}.tasks", "a group needs at least one task")
        elif len(g.tasks) > MAX_TASKS:
            self.bad(f"{at}.tasks", f"at most {MAX_TASKS} tasks per group, got {len(g.tasks)}")
        self.unique(f"{at}.tasks", [t.name for t in g.tasks], "task")
        labels = [p.label for p in g.network.ports]
        self.network(f"{at}.network", g.network)
        for i, t in enumerate(g.tasks):
            self.task(f"{at}.tasks[{i}]", t, labels)
        self.volumes(at, g)
        self.services(f"{at}.services", g, labels, published)
        self.constraints(f"{at}.constraints", g.constraints)
        self.affinities(f"{at}.affinities", g.affinities)
        self.spreads(f"{at}.spreads", g.spreads)
        if system and g.affinities:
            self.bad(f"{at}.affinities", "system jobs run on every eligible node; "
                                         "use constraints")
        if system and g.spreads:
            self.bad(f"{at}.spreads", "system jobs run on every eligible node; "
                                      "spread does not apply")
        if g.HasField("restart"):
            r = g.restart
            if r.attempts < 0:
                self.bad(f"{at}.restart.attempts", f"must be >= 0, got {r.attempts}")
            self.choice(f"{at}.restart.mode", r.mode, RESTART_MODES)
        if g.HasField("reschedule"):
            if system:
                self.bad(f"{at}.reschedule", "system allocations stay on their node and are "
                                             "never rescheduled; remove it")
            self.reschedule(f"{at}.reschedule", g.reschedule)
        if g.HasField("update"):
            if batch:
                self.bad(f"{at}.update", "batch jobs run to completion and are not rolled; "
                                         "remove it")
            else:
                self.update(f"{at}.update", g.update, count)
        elif job.HasField("update") and job.update.canary > count and not system:
            self.bad("update.canary", f"must be <= the count of group {g.name!r} ({count}), "
                                      f"got {job.update.canary}")
        if g.HasField("scaling"):
            self.scaling(f"{at}.scaling", g.scaling, count)
        if g.HasField("disconnect"):
            self.disconnect(f"{at}.disconnect", g.disconnect, system=system)

    def disconnect(self, at: str, d: job_pb2.Disconnect, *, system: bool) -> None:
        self.choice(f"{at}.reconcile", d.reconcile, RECONCILE)
        if d.replace and system:
            self.bad(f"{at}.replace", "system allocations stay on their node; a replacement "
                                      "elsewhere does not apply")
    def network(self, at: str, n: job_pb2.Network) -> None:
        self.choice(f"{at}.mode", n.mode, NETWORK_MODES)
        statics: Counter[int] = Counter()
        for i, p in enumerate(n.ports):
            pat = f"{at}.ports[{i}]"
            self.name(f"{pat}.label", p.label, PORT_LABEL,
                      "letters, digits and '_', not starting with a digit")
            if not 0 <= p.static <= 65535:
                self.bad(f"{pat}.static", f"must be a port 1..65535 (0 = dynamic), got {p.static}")
            elif p.static:
                statics[p.static] += 1
            if not 0 <= p.to <= 65535:
                self.bad(f"{pat}.to", f"must be a port 1..65535 (0 = same as the host port), "
                                      f"got {p.to}")
            if n.mode == "host" and p.to and p.to != p.static:
                self.bad(f"{pat}.to", "in host mode the task listens on the host port itself; "
                                      "remove 'to' or make it equal to 'static'")
            self.choice(f"{pat}.protocol", p.protocol, PROTOCOLS)
        self.unique(f"{at}.ports", [p.label for p in n.ports], "port label")
        for port, k in statics.items():
            if k > 1:
                self.bad(f"{at}.ports", f"static port {port} is asked for {k} times")

    def services(self, at: str, g: job_pb2.TaskGroup, labels: list[str],
                 published: dict[int, str]) -> None:
        tasks = [t.name for t in g.tasks]
        for i, s in enumerate(g.services):
            sat = f"{at}[{i}]"
            self.name(f"{sat}.name", s.name, SERVICE_NAME,
                      "lower case letters, digits and '-' (a DNS label)")
            if not s.port:
                self.bad(f"{sat}.port", "is required: the label of one of the group's "
                                        "network ports")
            elif s.port not in labels:
                self.bad(f"{sat}.port", self._label_hint(s.port, labels))
            if not 0 <= s.published_port <= 65535:
                self.bad(f"{sat}.published_port", f"must be a port 1..65535 (0 = not published), "
                                                  f"got {s.published_port}")
            elif s.published_port:
                other = published.get(s.published_port)
                if other is not None:
                    self.bad(f"{sat}.published_port", f"port {s.published_port} is already "
                                                      f"published by service {other!r}")
                published[s.published_port] = s.name
            self.choice(f"{sat}.protocol", s.protocol, PROTOCOLS)
            self.choice(f"{sat}.lb_policy", s.lb_policy, LB_POLICIES)
            if s.task and s.task not in tasks:
                self.bad(f"{sat}.task", f"no task named {s.task!r} in this group "
                                        f"(tasks: {', '.join(tasks) or 'none'})")
            if s.HasField("check"):
                self.check(f"{sat}.check", s.check, labels)
        self.unique(at, [s.name for s in g.services], "service")

    @staticmethod
    def _label_hint(label: str, labels: list[str]) -> str:
        if not labels:
            return f"no port labelled {label!r}: the group's network declares no ports"
        close = difflib.get_close_matches(label, labels, n=1, cutoff=0.6)
        if close:
            return f"no port labelled {label!r}; did you mean {close[0]!r}?"
        return f"no port labelled {label!r} in the group's network (labels: {', '.join(labels)})"

    # --- volumes --------------------------------------------------------------------------

    def volumes(self, at: str, g: job_pb2.TaskGroup) -> None:
        """The group's volumes, and every task's mounts of them."""
        for name, v in g.volumes.items():
            vat = f"{at}.volumes.{name}" if VOLUME_NAME.match(name) else f"{at}.volumes[{name!r}]"
            self.name(vat, name, VOLUME_NAME, "letters, digits, '.', '-' and '_'")
            self.choice(f"{vat}.type", v.type, VOLUME_TYPES)
            if v.source:
                self.name(f"{vat}.source", v.source, VOLUME_NAME,
                          "a volume name: letters, digits, '.', '-' and '_'")
            if (v.type or "host") == "docker" and len(v.source or name) < 2:
                self.bad(f"{vat}.source", f"a Docker volume's name has at least 2 characters, "
                                          f"got {v.source or name!r}")
            if v.per_alloc and (v.type or "host") == "host":
                self.bad(f"{vat}.per_alloc", "applies to docker volumes: a host volume is the "
                                             "node's own (declare one per node instead)")
        names = sorted(g.volumes)
        for i, t in enumerate(g.tasks):
            driver = t.driver or "docker"
            for j, m in enumerate(t.volume_mounts):
                mat = f"{at}.tasks[{i}].volume_mounts[{j}]"
                if not m.volume:
                    self.bad(f"{mat}.volume", "is required: the name of one of the group's "
                                              "volumes")
                elif m.volume not in g.volumes:
                    self.bad(f"{mat}.volume", self._volume_hint(m.volume, names))
                elif driver == "process" and (g.volumes[m.volume].type or "host") == "docker":
                    self.bad(f"{mat}.volume", f"volume {m.volume!r} is a Docker volume: only "
                                              "docker tasks mount those (use a host volume)")
                self.destination(f"{mat}.destination", m.destination, driver)
            self.unique(f"{at}.tasks[{i}].volume_mounts",
                        [m.destination.rstrip("/") for m in t.volume_mounts], "destination")

    def destination(self, at: str, dest: str, driver: str) -> None:
        if not dest:
            self.bad(at, "is required: where the volume appears in the task")
        elif ".." in dest.split("/"):
            self.bad(at, f"must not contain '..', got {dest!r}")
        elif "\0" in dest:
            self.bad(at, "must not contain NUL characters")
        elif driver == "docker" and not dest.startswith("/"):
            self.bad(at, f"must be an absolute path in the container, got {dest!r}")
        elif not dest.strip("/"):
            self.bad(at, "must not be the root folder")

    @staticmethod
    def _volume_hint(name: str, names: list[str]) -> str:
        if not names:
            return f"no volume {name!r}: the group declares no volumes (add it under volumes)"
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        if close:
            return f"no volume {name!r} in the group; did you mean {close[0]!r}?"
        return f"no volume {name!r} in the group (volumes: {', '.join(names)})"

    # --- task -----------------------------------------------------------------------------

    def task(self, at: str, t: job_pb2.Task, labels: list[str]) -> None:
        self.name(f"{at}.name", t.name, TASK_NAME, "letters, digits, '.', '-' and '_'")
        driver = t.driver or "docker"
        self.choice(f"{at}.driver", t.driver, DRIVERS)
        if driver == "docker" and not t.image:
            self.bad(f"{at}.image", "is required for the docker driver")
        if driver == "process":
            if not t.command:
                self.bad(f"{at}.command", "is required for the process driver")
            if t.image:
                self.bad(f"{at}.image", "the process driver runs 'command'; remove 'image'")
        res = t.resources
        if res.cpu_millicores < 0:
            self.bad(f"{at}.resources.cpu_millicores", f"must be > 0, got {res.cpu_millicores}")
        if res.memory_mb < 0:
            self.bad(f"{at}.resources.memory_mb", f"must be > 0, got {res.memory_mb}")
        for key in t.env:
            if not ENV_NAME.match(key):
                self.bad(f"{at}.env", f"{key!r} is not a valid environment variable name")
        if t.kill_signal and t.kill_signal not in SIGNALS:
            self.bad(f"{at}.kill_signal", f"must be a signal name such as SIGTERM or SIGINT, "
                                          f"got {t.kill_signal!r}")
        for i, c in enumerate(t.checks):
            self.check(f"{at}.checks[{i}]", c, labels)
        self.secrets(at, t)

    def secrets(self, at: str, t: job_pb2.Task) -> None:
        """The task's secrets and templates: names, files, where templates write, and that
        each template parses and names its secrets and services literally."""
        files = []
        for i, s in enumerate(t.secrets):
            sat = f"{at}.secrets[{i}]"
            self.name(f"{sat}.name", s.name, SECRET_NAME, "letters, digits, '.', '-' and '_'")
            if s.file:
                self.name(f"{sat}.file", s.file, SECRET_NAME,
                          "a file name: letters, digits, '.', '-' and '_'")
            files.append(f"secrets/{s.file or s.name}")
            if s.env and not ENV_NAME.match(s.env):
                self.bad(f"{sat}.env", f"{s.env!r} is not a valid environment variable name")
            elif s.env in t.env:
                self.bad(f"{sat}.env", f"{s.env!r} is also set in env; choose one")
        self.unique(f"{at}.secrets", [s.name for s in t.secrets], "secret")
        for i, tpl in enumerate(t.templates):
            tat = f"{at}.templates[{i}]"
            if not DESTINATION.match(tpl.destination) or ".." in tpl.destination.split("/"):
                self.bad(f"{tat}.destination", "must be secrets/<file> (a tmpfs only the task "
                         f"sees) or local/<path>, got {tpl.destination!r}")
            files.append(tpl.destination)
            if not tpl.data:
                self.bad(f"{tat}.data", "is required: the template's text")
            else:
                try:
                    found = uses(tpl.data)
                except TemplateProblem as e:
                    self.bad(f"{tat}.data", str(e))
                else:
                    for name in sorted(found.secrets):
                        if not SECRET_NAME.match(name) or len(name) > MAX_NAME:
                            self.bad(f"{tat}.data", f"secret({name!r}): not a secret name")
            self.choice(f"{tat}.change_mode", tpl.change_mode, CHANGE_MODES)
            if tpl.change_signal and tpl.change_signal not in SIGNALS:
                self.bad(f"{tat}.change_signal", f"must be a signal name such as SIGHUP, got "
                                                 f"{tpl.change_signal!r}")
            if tpl.perms and not PERMS.match(tpl.perms):
                self.bad(f"{tat}.perms", f"must be an octal file mode such as 0400, got "
                                         f"{tpl.perms!r}")
        self.unique(f"{at}.templates", files, "file")

    def check(self, at: str, c: job_pb2.Check, labels: list[str]) -> None:
        if not c.type:
            self.bad(f"{at}.type", f"is required: one of {', '.join(CHECK_TYPES)}")
            return
        if c.type not in CHECK_TYPES:
            self.bad(f"{at}.type", _one_of(c.type, CHECK_TYPES))
            return
        if c.type in ("tcp", "http"):
            if not c.port:
                self.bad(f"{at}.port", f"is required for a {c.type} check: a port label")
            elif c.port not in labels:
                self.bad(f"{at}.port", self._label_hint(c.port, labels))
        if c.type == "exec" and not c.command:
            self.bad(f"{at}.command", "is required for an exec check")
        if c.type == "http":
            if c.path and not c.path.startswith("/"):
                self.bad(f"{at}.path", f"must start with '/', got {c.path!r}")
            if c.method and c.method.upper() not in HTTP_METHODS:
                self.bad(f"{at}.method", _one_of(c.method, HTTP_METHODS))
            for name, code in (("status_min", c.status_min), ("status_max", c.status_max)):
                if code and not 100 <= code <= 599:
                    self.bad(f"{at}.{name}", f"must be an HTTP status 100..599, got {code}")
            if c.status_min and c.status_max and c.status_min > c.status_max:
                self.bad(f"{at}.status_max", f"must be >= status_min ({c.status_min}), "
                                             f"got {c.status_max}")
        interval, timeout = _secs(c.interval), _secs(c.timeout)
        if interval and timeout and timeout > interval:
            self.bad(f"{at}.timeout", f"must not exceed the interval ({interval:g}s), "
                                      f"got {timeout:g}s")
        for name in ("healthy_threshold", "unhealthy_threshold"):
            if getattr(c, name) < 0:
                self.bad(f"{at}.{name}", f"must be >= 1, got {getattr(c, name)}")
        if c.HasField("check_restart"):
            limit = c.check_restart.limit
            if not 0 <= limit <= MAX_CHECK_RESTART:
                self.bad(f"{at}.check_restart.limit", f"must be 0 (never) .. "
                                                      f"{MAX_CHECK_RESTART}, got {limit}")

    # --- policies -------------------------------------------------------------------------

    def reschedule(self, at: str, r: job_pb2.ReschedulePolicy) -> None:
        if r.attempts < 0:
            self.bad(f"{at}.attempts", f"must be >= 0, got {r.attempts}")
        if r.unlimited and r.attempts:
            self.bad(f"{at}.attempts", "is ignored when unlimited is true; set one of them")
        self.choice(f"{at}.delay_function", r.delay_function, DELAY_FUNCTIONS)
        if r.HasField("delay") and r.HasField("max_delay") and _secs(r.max_delay) < _secs(r.delay):
            self.bad(f"{at}.max_delay", f"must be >= delay ({_secs(r.delay):g}s), "
                                        f"got {_secs(r.max_delay):g}s")
        if r.attempts and not r.unlimited and not _secs(r.interval):
            self.bad(f"{at}.interval", "is required with a limited number of attempts "
                                       "(the window the attempts are counted in)")

    def update(self, at: str, u: job_pb2.UpdateStrategy, count: int | None) -> None:
        if u.max_parallel < 0:
            self.bad(f"{at}.max_parallel", f"must be >= 1, got {u.max_parallel}")
        if u.canary < 0:
            self.bad(f"{at}.canary", f"must be >= 0, got {u.canary}")
        elif count is not None and u.canary > count:
            self.bad(f"{at}.canary", f"must be <= the group's count ({count}), got {u.canary}")
        mht, hd, pd = (_secs(u.min_healthy_time), _secs(u.healthy_deadline),
                       _secs(u.progress_deadline))
        if mht and hd and hd <= mht:
            self.bad(f"{at}.healthy_deadline", f"must be longer than min_healthy_time "
                                               f"({mht:g}s), got {hd:g}s")
        if hd and pd and pd < hd:
            self.bad(f"{at}.progress_deadline", f"must be >= healthy_deadline ({hd:g}s), "
                                                f"got {pd:g}s")
        if u.auto_promote and not u.canary:
            self.bad(f"{at}.auto_promote", "needs canary > 0")

    def scaling(self, at: str, s: job_pb2.Scaling, count: int) -> None:
        if s.min < 0:
            self.bad(f"{at}.min", f"must be >= 0, got {s.min}")
        if s.max < s.min:
            self.bad(f"{at}.max", f"must be >= min ({s.min}), got {s.max}")
        elif s.max > MAX_COUNT:
            self.bad(f"{at}.max", f"must be <= {MAX_COUNT:,}, got {s.max:,}")
        elif s.enabled and not s.min <= count <= s.max:
            self.bad(f"{at}", f"count {count} is outside min..max ({s.min}..{s.max})")
        self.choice(f"{at}.metric", s.metric, SCALING_METRICS)
        if s.enabled:
            if not s.metric:
                self.bad(f"{at}.metric", f"is required when enabled: one of "
                                         f"{', '.join(SCALING_METRICS)}")
            if s.target <= 0:
                self.bad(f"{at}.target", f"must be > 0 when enabled, got {s.target:g}")

    # --- placement rules ------------------------------------------------------------------

    def constraints(self, at: str, items: Iterable[job_pb2.Constraint]) -> None:
        for i, c in enumerate(items):
            cat = f"{at}[{i}]"
            op = cl.canonical_operator(c.operator)
            if op not in cl.OPERATORS:
                self.bad(f"{cat}.operator", _one_of(c.operator, cl.OPERATORS))
                continue
            if op != "distinct_hosts" or c.attribute:
                why = cl.check_target(c.attribute) if c.attribute else "is required"
                if why:
                    self.bad(f"{cat}.attribute", why)
            if op not in ("is_set", "is_not_set", "distinct_hosts", "distinct_property") \
                    and op != "!=" and not c.value:
                self.bad(f"{cat}.value", f"is required with operator {op!r}")
                continue
            why = cl.check_operand(op, c.value)
            if why:
                self.bad(f"{cat}.value", why)

    def affinities(self, at: str, items: Iterable[job_pb2.Affinity]) -> None:
        for i, a in enumerate(items):
            aat = f"{at}[{i}]"
            op = cl.canonical_operator(a.operator)
            if op in cl.PLACEMENT_OPERATORS or op not in cl.OPERATORS:
                choices = tuple(o for o in cl.OPERATORS if o not in cl.PLACEMENT_OPERATORS)
                self.bad(f"{aat}.operator", _one_of(a.operator, choices))
                continue
            why = cl.check_target(a.attribute) if a.attribute else "is required"
            if why:
                self.bad(f"{aat}.attribute", why)
            if not -100 <= a.weight <= 100:
                self.bad(f"{aat}.weight", f"must be between -100 and 100 (not 0), got {a.weight}")
            if op not in ("is_set", "is_not_set", "!=") and not a.value:
                self.bad(f"{aat}.value", f"is required with operator {op!r}")
                continue
            why = cl.check_operand(op, a.value)
            if why:
                self.bad(f"{aat}.value", why)

    def spreads(self, at: str, items: Iterable[job_pb2.Spread]) -> None:
        for i, s in enumerate(items):
            sat = f"{at}[{i}]"
            why = cl.check_target(s.attribute) if s.attribute else "is required"
            if why:
                self.bad(f"{sat}.attribute", why)
            if not 0 <= s.weight <= 100:
                self.bad(f"{sat}.weight", f"must be between 0 and 100, got {s.weight}")
            total = 0
            for j, t in enumerate(s.targets):
                if not t.value:
                    self.bad(f"{sat}.targets[{j}].value", "is required")
                if not 0 <= t.percent <= 100:
                    self.bad(f"{sat}.targets[{j}].percent",
                             f"must be between 0 and 100, got {t.percent}")
                total += t.percent
            if total > 100:
                self.bad(f"{sat}.targets", f"percentages add up to {total}; at most 100")
            self.unique(f"{sat}.targets", [t.value for t in s.targets], "target")
