"""Job files: YAML and JSON onto the Job message, every problem reported at once."""

from pathlib import Path

import pytest

from orch.errors import ConfigError, JobSpecError
from orch.jobspec import load_job, load_job_file, parse_job
from orch.jobspec.model import job_from_proto, job_to_proto
from orch.v1 import job_pb2

EXAMPLES = Path(__file__).resolve().parents[3] / "deploy" / "examples"

MINIMAL = """
name: web
groups:
  - name: g
    tasks:
      - name: t
        image: nginx
"""


def problems(text: str, source: str = "web.yaml") -> list[str]:
    with pytest.raises(JobSpecError) as info:
        parse_job(text, source)
    return [p.render() for p in info.value.problems]


@pytest.mark.parametrize("name", ["web.yaml", "web.json", "batch.yaml", "system.yaml"])
def test_every_example_parses_and_converts(name: str) -> None:
    job = load_job(EXAMPLES / name)
    assert job.groups
    assert all(t.resources.memory_mb > 0 for g in job.groups for t in g.tasks)


def test_examples_cover_the_three_job_types() -> None:
    kinds = {load_job(p).type for p in EXAMPLES.glob("*.yaml")}
    assert kinds == {"service", "batch", "system"}


def test_yaml_and_json_examples_are_the_same_job() -> None:
    assert load_job_file(EXAMPLES / "web.yaml") == load_job_file(EXAMPLES / "web.json")


def test_fields_land_where_the_proto_says() -> None:
    pb = load_job_file(EXAMPLES / "web.yaml")
    assert pb.type == job_pb2.JOB_TYPE_SERVICE
    assert pb.update.min_healthy_time.seconds == 10
    assert pb.update.healthy_deadline.seconds == 180
    g = pb.groups[0]
    assert g.count == 3
    assert g.spreads[0].targets[1].percent == 30
    assert g.tasks[0].env["NGINX_PORT"] == "8080"  # a YAML int kept as written
    job = job_from_proto(pb)
    assert job.groups[0].restart.interval == 300.0
    assert job.groups[0].tasks[0].kill_timeout == 20.0


def test_model_round_trips_through_the_wire_form() -> None:
    job = load_job(EXAMPLES / "web.yaml")
    assert job_from_proto(job_to_proto(job)) == job


def test_minimal_job_takes_defaults() -> None:
    job = job_from_proto(parse_job(MINIMAL))
    assert (job.type, job.priority, job.namespace) == ("service", 50, "default")
    g = job.groups[0]
    assert g.count == 1
    assert g.tasks[0].driver == "docker"
    assert g.tasks[0].resources.cpu_millicores == 100


def test_count_zero_is_a_real_value() -> None:
    job = job_from_proto(parse_job(MINIMAL.replace("  - name: g", "  - name: g\n    count: 0")))
    assert job.groups[0].count == 0


def test_batch_jobs_get_batch_reschedule_defaults() -> None:
    job = job_from_proto(parse_job("type: batch\n" + MINIMAL))
    r = job.groups[0].reschedule
    assert (r.attempts, r.unlimited, r.delay_function) == (1, False, "constant")


def test_string_fields_keep_scalars_exactly_as_written() -> None:
    text = MINIMAL + """    constraints:
      - attribute: ${attr.os.version}
        operator: version
        value: 1.10
    meta:
      country: NO
      enabled: yes
"""
    g = parse_job(text).groups[0]
    assert g.constraints[0].value == "1.10"
    assert dict(g.meta) == {"country": "NO", "enabled": "yes"}


def test_the_issue_example_message_names_file_path_and_problem() -> None:
    text = MINIMAL + """      - name: side
        image: busybox
        resources:
          memory_mb: -5
"""
    assert problems(text) == [
        "groups[0].tasks[1].resources.memory_mb: must be > 0, got -5 (line 11)"]
    with pytest.raises(JobSpecError) as info:
        parse_job(text, "web.yaml")
    assert str(info.value) == (
        "web.yaml: groups[0].tasks[1].resources.memory_mb: must be > 0, got -5 (line 11)")
    assert isinstance(info.value, ConfigError)


def test_every_error_is_reported_at_once_in_file_order() -> None:
    text = """
name: Web App
type: servise
version: 4
groups:
  - name: frontend
    count: -1
    network:
      ports:
        - label: http
    services:
      - name: web
        port: htp
    tasks:
      - name: nginx
        image: nginx
        resources:
          memroy_mb: 64
          cpu_millicores: lots
        kill_timeout: 5
      - name: nginx
        driver: process
"""
    got = problems(text)
    assert got == [
        "name: must be lower case letters, digits, '-' and '_', starting with a letter or "
        "digit, got 'Web App' (line 2)",
        "type: must be one of service, batch, system, got 'servise'; did you mean 'service'? "
        "(line 3)",
        "version: is set by the controller; remove it from the job file (line 4)",
        "groups[0].count: must be >= 0, got -1 (line 7)",
        "groups[0].services[0].port: no port labelled 'htp'; did you mean 'http'? (line 13)",
        "groups[0].tasks: task 'nginx' is used 2 times; names must be unique (line 14)",
        "groups[0].tasks[0].resources.memroy_mb: unknown field; did you mean 'memory_mb'? "
        "(line 18)",
        "groups[0].tasks[0].resources.cpu_millicores: must be a whole number, got 'lots' "
        "(line 19)",
        "groups[0].tasks[0].kill_timeout: must be a duration such as \"30s\" or \"1m30s\", "
        "got 5 (line 20)",
        "groups[0].tasks[1].command: is required for the process driver (line 21)",
    ]


def test_json_errors_name_the_path_without_lines() -> None:
    text = '{"name": "web", "groups": [{"name": "g", "tasks": [{"name": "t", ' \
           '"image": "x", "resources": {"memory_mb": -5, "cpus": 1}}]}]}'
    assert problems(text, "web.json") == [
        "groups[0].tasks[0].resources.cpus: unknown field (known: cpu_millicores, memory_mb)",
        "groups[0].tasks[0].resources.memory_mb: must be > 0, got -5",
    ]


def test_common_names_from_other_tools_are_suggested() -> None:
    text = MINIMAL + "        resources: {cpu: 100}\n"
    assert problems(text) == [
        "groups[0].tasks[0].resources.cpu: unknown field; did you mean 'cpu_millicores'? "
        "(line 8)"]


def test_syntax_errors_name_the_line() -> None:
    (only,) = problems("name: web\ngroups: [\n  - x\n")
    assert only.startswith("not valid YAML")
    assert only.endswith("(line 3)")
    (only,) = problems('{"name": "web",\n "groups": }', "web.json")
    assert only.startswith("not valid JSON")
    assert only.endswith("(line 2)")


def test_duplicate_keys_are_errors_not_silently_merged() -> None:
    assert problems("name: web\nname: api\n" + MINIMAL.split("\n", 2)[2]) == [
        "name: duplicate key (first on line 1) (line 2)"]


def test_wrong_shapes_are_explained() -> None:
    got = problems("name: web\ndatacenters: dc1\ngroups:\n  name: g\n")
    assert got == [
        "datacenters: must be a list, e.g. [dc1], got 'dc1' (line 2)",
        "groups: must be a list, got a mapping (line 4)",
    ]


def test_empty_and_multi_document_files_are_refused() -> None:
    assert problems("") == ["the file is empty; a job file holds one job"]
    assert problems(MINIMAL + "---\n" + MINIMAL) == [
        "holds more than one YAML document; one job per file (line 10)"]


def test_yaml_anchors_and_merge_keys_work() -> None:
    text = """
name: web
groups:
  - name: a
    tasks:
      - &base
        name: t
        image: nginx
        resources: {cpu_millicores: 200, memory_mb: 256}
  - name: b
    tasks:
      - <<: *base
        image: nginx:2
"""
    pb = parse_job(text)
    assert pb.groups[1].tasks[0].resources.memory_mb == 256
    assert pb.groups[1].tasks[0].image == "nginx:2"


def test_null_means_not_set() -> None:
    pb = parse_job(MINIMAL + "    meta:\n    restart:\n")
    assert not pb.groups[0].HasField("restart")


def test_missing_file_is_a_job_spec_error(tmp_path: Path) -> None:
    with pytest.raises(JobSpecError, match="file not found"):
        load_job_file(tmp_path / "nope.yaml")


def test_format_follows_the_extension_then_the_content(tmp_path: Path) -> None:
    p = tmp_path / "job"
    p.write_text('{"name": "web", "groups": [{"name": "g", "tasks": [{"name": "t", '
                 '"image": "x"}]}]}')
    assert load_job_file(p).name == "web"
