"""Semantic checks of Job messages, as the API will run them on submitted jobs."""

import pytest

from orch.errors import JobSpecError
from orch.jobspec import check_job, parse_job
from orch.jobspec.validate import validate_job
from orch.v1 import job_pb2


def job() -> job_pb2.Job:
    return job_pb2.Job(name="web", groups=[job_pb2.TaskGroup(
        name="g", tasks=[job_pb2.Task(name="t", image="nginx")])])


def messages(pb: job_pb2.Job) -> list[str]:
    return [f"{p.path}: {p.message}" for p in validate_job(pb)]


GROUP = """
name: web
{job_extra}
groups:
  - name: g
{group_extra}
    tasks:
      - name: t
        image: nginx
{task_extra}
"""


def check(job_extra: str = "", group_extra: str = "", task_extra: str = "") -> list[str]:
    text = GROUP.format(job_extra=job_extra, group_extra=group_extra, task_extra=task_extra)
    try:
        parse_job(text)
    except JobSpecError as e:
        return [f"{p.path}: {p.message}" for p in e.problems]
    return []


def test_a_minimal_message_is_valid() -> None:
    assert messages(job()) == []
    check_job(job())


def test_check_job_raises_with_every_problem() -> None:
    pb = job()
    pb.name = ""
    pb.priority = 500
    with pytest.raises(JobSpecError) as info:
        check_job(pb, "api")
    assert str(info.value) == ("api: name: is required\n"
                               "api: priority: must be between 1 and 100, got 500")


def test_a_job_needs_groups_and_groups_need_tasks() -> None:
    assert messages(job_pb2.Job(name="x")) == ["groups: a job needs at least one group"]
    assert messages(job_pb2.Job(name="x", groups=[job_pb2.TaskGroup(name="g")])) == [
        "groups[0].tasks: a group needs at least one task"]


def test_group_names_are_unique() -> None:
    pb = job()
    pb.groups.append(pb.groups[0])
    assert messages(pb) == ["groups: group 'g' is used 2 times; names must be unique"]


@pytest.mark.parametrize(("extra", "expected"), [
    ("        driver: podman", "groups[0].tasks[0].driver: must be one of docker, process, "
                               "got 'podman'"),
    ("        resources: {cpu_millicores: -1}",
     "groups[0].tasks[0].resources.cpu_millicores: must be > 0, got -1"),
    ("        env: {'1BAD': x}", "groups[0].tasks[0].env: '1BAD' is not a valid environment "
                                 "variable name"),
    ("        kill_signal: TERM", "groups[0].tasks[0].kill_signal: must be a signal name such "
                                  "as SIGTERM or SIGINT, got 'TERM'"),
    ("        checks: [{type: exec}]", "groups[0].tasks[0].checks[0].command: is required for "
                                       "an exec check"),
    ("        checks: [{type: tcp, port: web}]", "groups[0].tasks[0].checks[0].port: no port "
     "labelled 'web': the group's network declares no ports"),
])
def test_task_rules(extra: str, expected: str) -> None:
    assert check(task_extra=extra) == [expected]


def test_process_driver_needs_a_command_and_no_image() -> None:
    got = check(task_extra="        driver: process")
    assert got == ["groups[0].tasks[0].command: is required for the process driver",
                   "groups[0].tasks[0].image: the process driver runs 'command'; remove 'image'"]


def test_ports_and_services() -> None:
    group = """    network:
      mode: host
      ports:
        - {label: http, static: 80, to: 8080}
        - {label: http, static: 80}
        - {label: 9bad, static: 70000}
    services:
      - {name: Web, port: http, lb_policy: fastest, published_port: 80}
      - {name: api, port: http, published_port: 80, task: nope}"""
    assert check(group_extra=group) == [  # in file order: the ports list starts on line 8
        "groups[0].network.ports: port label 'http' is used 2 times; names must be unique",
        "groups[0].network.ports: static port 80 is asked for 2 times",
        "groups[0].network.ports[0].to: in host mode the task listens on the host port itself; "
        "remove 'to' or make it equal to 'static'",
        "groups[0].network.ports[2].label: must be letters, digits and '_', not starting with "
        "a digit, got '9bad'",
        "groups[0].network.ports[2].static: must be a port 1..65535 (0 = dynamic), got 70000",
        "groups[0].services[0].name: must be lower case letters, digits and '-' (a DNS label), "
        "got 'Web'",
        "groups[0].services[0].lb_policy: must be one of round_robin, random, least_conn, p2c, maglev, "
        "got 'fastest'",
        "groups[0].services[1].published_port: port 80 is already published by service 'Web'",
        "groups[0].services[1].task: no task named 'nope' in this group (tasks: t)",
    ]


@pytest.mark.parametrize(("extra", "expected"), [
    ("    constraints: [{attribute: '${node.class}', operator: '~=', value: x}]",
     "groups[0].constraints[0].operator: must be one of =, !=, <, <=, >, >=, version, semver, "
     "regexp, set_contains, set_contains_any, is_set, is_not_set, distinct_hosts, "
     "distinct_property, got '~='"),
    ("    constraints: [{attribute: 'node.class', value: gpu}]",
     "groups[0].constraints[0].attribute: must name a node attribute such as ${node.class}, "
     "${attr.kernel.name} or ${meta.rack}, got 'node.class'"),
    ("    constraints: [{attribute: '${node.kind}', value: gpu}]",
     "groups[0].constraints[0].attribute: unknown target '${node.kind}': use "
     "${node.<id|name|datacenter|region|class|unique.id|unique.name>}, ${attr.<name>} or "
     "${meta.<name>}"),
    ("    constraints: [{attribute: '${attr.os}', operator: regexp, value: '(['}]",
     "groups[0].constraints[0].value: not a valid regular expression: unterminated character "
     "set at position 1"),
    ("    constraints: [{attribute: '${attr.os}', operator: version, value: 'newest'}]",
     "groups[0].constraints[0].value: not a version range: 'newest' (write e.g. \">= 1.2, < "
     "2.0\")"),
    ("    constraints: [{attribute: '${attr.os}', operator: '>'}]",
     "groups[0].constraints[0].value: is required with operator '>'"),
    ("    constraints: [{operator: distinct_property, attribute: '${meta.rack}', value: '0'}]",
     "groups[0].constraints[0].value: distinct_property takes a limit >= 1, got '0'"),
    ("    affinities: [{attribute: '${node.class}', value: x, weight: 200}]",
     "groups[0].affinities[0].weight: must be between -100 and 100 (not 0), got 200"),
    ("    affinities: [{operator: distinct_hosts}]",
     "groups[0].affinities[0].operator: must be one of =, !=, <, <=, >, >=, version, semver, "
     "regexp, set_contains, set_contains_any, is_set, is_not_set, got 'distinct_hosts'"),
    ("    spreads: [{attribute: '${node.datacenter}', targets: [{value: a, percent: 60}, "
     "{value: b, percent: 60}]}]",
     "groups[0].spreads[0].targets: percentages add up to 120; at most 100"),
])
def test_placement_rule_checks(extra: str, expected: str) -> None:
    assert check(group_extra=extra) == [expected]


def test_distinct_hosts_needs_no_attribute() -> None:
    assert check(group_extra="    constraints: [{operator: distinct_hosts}]") == []


def test_system_jobs_refuse_what_cannot_apply() -> None:
    got = check(job_extra="type: system", group_extra="""    count: 3
    spreads: [{attribute: '${node.datacenter}'}]
    reschedule: {attempts: 1, interval: 1h}""")
    assert got == [
        "groups[0].count: system jobs run one allocation per eligible node; remove count (got 3)",
        "groups[0].spreads: system jobs run on every eligible node; spread does not apply",
        "groups[0].reschedule: system allocations stay on their node and are never "
        "rescheduled; remove it",
    ]


def test_update_and_reschedule_policies() -> None:
    got = check(group_extra="""    count: 2
    update: {canary: 3, min_healthy_time: 1m, healthy_deadline: 30s, auto_promote: true}
    reschedule: {attempts: 2, delay: 1m, max_delay: 10s, delay_function: linear}""")
    assert got == [
        "groups[0].update.canary: must be <= the group's count (2), got 3",
        "groups[0].update.healthy_deadline: must be longer than min_healthy_time (60s), got 30s",
        "groups[0].reschedule.delay_function: must be one of constant, exponential, fibonacci, "
        "got 'linear'",
        "groups[0].reschedule.max_delay: must be >= delay (60s), got 10s",
        "groups[0].reschedule.interval: is required with a limited number of attempts (the "
        "window the attempts are counted in)",
    ]


def test_batch_jobs_have_no_update_strategy() -> None:
    assert check(job_extra="type: batch\nupdate: {max_parallel: 2}") == [
        "update: batch jobs run to completion and are not rolled; remove it"]


def test_scaling_bounds() -> None:
    got = check(group_extra="    count: 5\n    scaling: {min: 1, max: 3, enabled: true}")
    assert got == ["groups[0].scaling: count 5 is outside min..max (1..3)",
                   "groups[0].scaling.metric: is required when enabled: one of cpu, "
                   "connections, requests",
                   "groups[0].scaling.target: must be > 0 when enabled, got 0"]


def test_check_restart_and_disconnect_read_from_a_job_file() -> None:
    from orch.jobspec.model import job_from_proto
    group = ("    disconnect: {stop_after: 30s, lost_after: 1m, replace: true,\n"
             "                 reconcile: keep_original}\n"
             "    network: {ports: [{label: http}]}")
    task = ("        checks:\n"
            "          - {type: http, port: http,\n"
            "             check_restart: {limit: 3, grace: 20s, ignore_warnings: true}}")
    text = GROUP.format(job_extra="", group_extra=group, task_extra=task)
    g = job_from_proto(parse_job(text)).groups[0]
    assert g.disconnect is not None
    assert (g.disconnect.stop_after, g.disconnect.lost_after, g.disconnect.replace,
            g.disconnect.reconcile) == (30.0, 60.0, True, "keep_original")
    r = g.tasks[0].checks[0].check_restart
    assert r is not None
    assert (r.limit, r.grace, r.ignore_warnings) == (3, 20.0, True)


@pytest.mark.parametrize(("group_extra", "task_extra", "expected"), [
    ("    disconnect: {reconcile: newest}", "", "groups[0].disconnect.reconcile: "),
    ("", "        checks: [{type: exec, command: x, check_restart: {limit: -1}}]",
     "groups[0].tasks[0].checks[0].check_restart.limit: must be 0 (never) .. 1000"),
])
def test_check_restart_and_disconnect_mistakes(group_extra: str, task_extra: str,
                                               expected: str) -> None:
    got = check(group_extra=group_extra, task_extra=task_extra)
    assert any(p.startswith(expected) for p in got), got
