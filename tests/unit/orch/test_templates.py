"""Task templates: what they read is known before they run; they render in a sandbox."""

from __future__ import annotations

import pytest

from orch.errors import JobSpecError
from orch.jobspec import parse_job
from orch.jobspec.model import job_from_proto
from orch.templates import MAX_OUTPUT, Endpoint, TemplateProblem, render, uses


def _ep(host: str, port: int) -> Endpoint:
    return Endpoint(address=f"{host}:{port}", host=host, port=port, node="n1", alloc_id="a")


def test_uses_finds_the_literal_names() -> None:
    u = uses('p={{ secret("db") }}\n{% for e in service("kv") %}{{ e.address }}{% endfor %}'
             '{{ secret("db") }}{{ node.name }}')
    assert u.secrets == {"db"}
    assert u.services == {"kv"}


@pytest.mark.parametrize(("data", "why"), [
    ("{{ secret(name) }}", "literal string"),
    ("{{ secret('a', 'b') }}", "literal string"),
    ("{{ service(x ~ 'y') }}", "literal string"),
    ("{% for %}", "does not parse"),
    ("{{ unclosed", "does not parse"),
])
def test_uses_refuses_what_it_cannot_know(data: str, why: str) -> None:
    with pytest.raises(TemplateProblem, match=why):
        uses(data)


def test_render_reads_secrets_services_and_the_node() -> None:
    text = render('pw={{ secret("db") }}\n{% for e in service("kv") %}s={{ e.address }}\n'
                  '{% endfor %}dc={{ node.datacenter }} k={{ node.attr["kernel.name"] }}\n',
                  secrets={"db": b"hunter2"},
                  services=lambda name: [_ep("10.0.0.2", 80), _ep("10.0.0.1", 80)]
                  if name == "kv" else [],
                  node={"datacenter": "dc1", "attr": {"kernel.name": "linux"}})
    assert text == "pw=hunter2\ns=10.0.0.1:80\ns=10.0.0.2:80\ndc=dc1 k=linux\n"


@pytest.mark.parametrize(("data", "why"), [
    ('{{ secret("missing") }}', "not available"),
    ("{{ nothing }}", "undefined"),
    ("{{ ''.__class__.__mro__ }}", "unsafe|cannot render"),
    ("{{ 1 // 0 }}", "ZeroDivisionError"),
    ("{{ 'x' * " + str(MAX_OUTPUT + 1) + " }}", "more than"),
])
def test_render_fails_with_a_sentence(data: str, why: str) -> None:
    with pytest.raises(TemplateProblem, match=why):
        render(data, secrets={}, services=lambda _: [], node={})


JOB = """
name: web
groups:
  - name: g
    tasks:
      - name: t
        image: app:1
        secrets:
          - {{name: db-password, env: DB_PASSWORD}}
          - {{name: tls.key, file: key.pem}}
        templates:
          - destination: {destination}
            data: {data!r}
            change_mode: {mode}
"""


def _job(destination: str = "local/app.conf", data: str = '{{ secret("api") }}',
         mode: str = "signal") -> str:
    return JOB.format(destination=destination, data=data, mode=mode)


def test_a_task_knows_every_secret_it_reads() -> None:
    job = job_from_proto(parse_job(_job()))
    task = job.groups[0].tasks[0]
    assert task.secret_names == {"db-password", "tls.key", "api"}
    assert [s.file_name for s in task.secrets] == ["db-password", "key.pem"]
    assert task.templates[0].change_mode == "signal"
    assert task.templates[0].change_signal == "SIGHUP"


@pytest.mark.parametrize(("text", "where"), [
    (_job(destination="/etc/passwd"), "templates[0].destination"),
    (_job(destination="local/../../x"), "templates[0].destination"),
    (_job(destination="secrets/a/b"), "templates[0].destination"),
    (_job(destination="secrets/key.pem"), "file 'secrets/key.pem' is used 2 times"),
    (_job(data="{{ secret(n) }}"), "templates[0].data"),
    (_job(data="{% if %}"), "does not parse"),
    (_job(mode="reload"), "templates[0].change_mode"),
    (_job().replace("db-password, env", "../x, env"), "secrets[0].name"),
    (_job().replace("DB_PASSWORD", "1X"), "secrets[0].env"),
])
def test_bad_secrets_and_templates_say_where(text: str, where: str) -> None:
    with pytest.raises(JobSpecError, match=where.replace("[", r"\[").replace("]", r"\]")):
        parse_job(text)
