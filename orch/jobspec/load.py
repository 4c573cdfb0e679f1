"""Job files in, valid Job messages (or one error listing every problem) out.

``orchctl`` and the controller both come through here::

    pb = load_job_file("web.yaml")      # job_pb2.Job, or JobSpecError
    job = job_from_proto(pb)            # the model the scheduler uses

A message that arrives over the API skips the file reader but not
:func:`check_job`.
"""

from __future__ import annotations

from pathlib import Path

from orch.errors import JobSpecError, JobSpecProblem
from orch.jobspec.decode import Decoder
from orch.jobspec.document import load_document
from orch.jobspec.model import Job, job_from_proto
from orch.jobspec.validate import validate_job
from orch.v1 import job_pb2

FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}


def detect_format(source: str, text: str) -> str:
    """``yaml`` or ``json`` from the file name, else from the first character."""
    fmt = FORMATS.get(Path(source).suffix.lower())
    if fmt:
        return fmt
    return "json" if text.lstrip().startswith("{") else "yaml"


def parse_job(text: str, source: str = "<job>", fmt: str | None = None) -> job_pb2.Job:
    """The valid Job message in ``text``; JobSpecError lists every problem otherwise.

    ``source`` names the text in messages (a file name, ``<stdin>``); ``fmt`` is
    ``yaml`` or ``json`` (guessed from ``source`` and the text when None).
    """
    doc, problems = load_document(text, fmt or detect_format(source, text))
    job = job_pb2.Job()
    if doc is None:
        raise JobSpecError(source, problems)
    dec = Decoder()
    dec.message(doc, job, "", top=True)
    problems += dec.problems
    decoded_bad = [p.path for p in problems if p.path]
    for p in validate_job(job):
        if any(_within(p.path, bad) for bad in decoded_bad):
            continue  # already reported where it went wrong in the file
        problems.append(JobSpecProblem(p.path, p.message, _line_of(p.path, dec.lines)))
    if problems:
        raise JobSpecError(source, sorted(problems, key=lambda p: (p.line is None, p.line or 0)))
    return job


def load_job_file(path: str | Path) -> job_pb2.Job:
    """Read and check a job file (``.yaml``, ``.yml`` or ``.json``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobSpecError(str(p), [JobSpecProblem("", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise JobSpecError(str(p), [JobSpecProblem("", f"cannot read: {e}")]) from None
    return parse_job(text, source=p.name if p.parent == Path() else str(p))


def load_job(path: str | Path) -> Job:
    """The model of the job in a file, every default filled in."""
    return job_from_proto(load_job_file(path))


def check_job(job: job_pb2.Job, source: str = "job") -> None:
    """Raise JobSpecError listing every problem of a Job message (e.g. one from the API)."""
    problems = validate_job(job)
    if problems:
        raise JobSpecError(source, problems)


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith((parent + ".", parent + "["))


def _line_of(path: str, lines: dict[str, int]) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return None
