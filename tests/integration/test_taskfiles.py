"""A task's files on disk, as root: the secrets folder is a tmpfs, files are written whole
with their modes and owners, never through a link the task planted, and unmounted when the
task goes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.runtime.taskfiles import TaskFiles
from orch.jobspec.model import Task, Template
from tests.unit.agent.test_taskfiles import _src, _task


async def test_files_are_written_whole_with_their_modes_and_never_through_a_link(
        tmp_path: Path) -> None:
    task_dir = tmp_path / "task"
    src = _src()
    files = TaskFiles(_task(), task_dir, lambda: src, in_container=False)
    assert await files.prepare() == ""
    assert (task_dir / "secrets" / "db").read_bytes() == b"pw"
    assert (task_dir / "secrets" / "db").stat().st_mode & 0o777 == 0o400
    assert (task_dir / "local" / "app.conf").read_text() == "10.0.0.1:80\n"
    assert files.env["ORCH_SECRETS_DIR"] == str(task_dir / "secrets")
    assert files.env["DB_PASSWORD"] == "pw"
    # the task replaces a folder of local/ with a link elsewhere: nothing is written there
    outside = tmp_path / "outside"
    outside.mkdir()
    nested = Task(name="t", templates=(Template(destination="local/conf/app.conf", data="x"),))
    sneaky = TaskFiles(nested, task_dir, lambda: src, in_container=False)
    (task_dir / "local" / "conf").symlink_to(outside)
    with pytest.raises(NotADirectoryError):  # O_NOFOLLOW on the link
        await sneaky.prepare()
    assert not list(outside.iterdir())
    # a changed input: written again, and the reaction says what changed
    src = _src(kv=("10.0.0.9:81",))
    react = await files.refresh()
    assert react is not None
    assert react.changed == ("local/app.conf",)
    assert (task_dir / "local" / "app.conf").read_text() == "10.0.0.9:81\n"
    assert not [p for p in (task_dir / "local").iterdir() if p.name.endswith(".tmp")]
    if os.geteuid() == 0:
        assert files.tmpfs
        assert _mounted(task_dir / "secrets")
    await files.cleanup()
    assert not _mounted(task_dir / "secrets")
    assert not (task_dir / "secrets").exists()


def _mounted(path: Path) -> bool:
    return str(path) in Path("/proc/self/mounts").read_text()
