"""The supervisor of one process task: ``python -m agent.runtime.process_shim TASK_DIR``.

What containerd's shim is to a container, and Nomad's executor to a raw_exec
task: a small process between the agent and the task, so the task outlives an
agent restart and its output is never lost. It

1. reads ``TASK_DIR/spec.json`` (argv, env, cwd, user, log limits);
2. starts the task in a new session and process group, stdin from /dev/null, in its
   cgroup (CPU and memory limits) when the agent made one, as its user;
3. writes ``state.json`` (its pid, the task's pid and process group, start time)
   and prints ``ok <pid>`` on its stdout for the agent, or ``error <message>``;
4. copies the task's stdout and stderr into rotated files under ``TASK_DIR/logs``;
5. when the task's main process exits, kills what is left of its process group and
   of its cgroup (as a container dies with its PID 1), drains the pipes, removes the
   cgroup and writes ``exit.json`` (exit code, signal, OOM kill, finish time). The
   agent notices the shim's exit through a pidfd and reads that file.

SIGTERM or SIGINT sent to the shim are passed on to the task's process group.
Standard library only, and no import of the agent beyond ``logfiles`` and ``cgroups``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent.runtime.cgroups import TaskCgroup
from agent.runtime.logfiles import RotatingWriter

DRAIN_SECONDS = 2.0
"""How long to keep reading after the task exited, if something still holds its pipes."""


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` atomically (a reader never sees half of it)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _identity(user: str) -> tuple[int, int, list[int]]:
    """(uid, gid, supplementary groups) of ``user`` (a name or a number)."""
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"no user {user!r} on this node") from None
    return pw.pw_uid, pw.pw_gid, os.getgrouplist(pw.pw_name, pw.pw_gid)


def _start(spec: dict[str, Any], cgroup: TaskCgroup | None) -> subprocess.Popen[bytes]:
    """The task, in a new session; between fork and exec it joins its cgroup (while
    still root) and then becomes its user, groups included."""
    ids = _identity(str(spec["user"])) if spec.get("user") else None

    def enter() -> None:
        if cgroup is not None:
            cgroup.join()
        if ids is not None:
            os.setgroups(ids[2])
            os.setgid(ids[1])
            os.setuid(ids[0])

    return subprocess.Popen(
        spec["argv"], env=spec["env"], cwd=spec.get("cwd") or None,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True, close_fds=True,
        preexec_fn=enter if cgroup is not None or ids is not None else None,
    )


def _pump(child: subprocess.Popen[bytes], writers: dict[int, RotatingWriter],
          cgroup: TaskCgroup | None) -> None:
    """Copy the child's output to the log files until its pipes close (or drain time ends)."""
    sel = selectors.DefaultSelector()
    for f in (child.stdout, child.stderr):
        assert f is not None
        os.set_blocking(f.fileno(), False)
        sel.register(f.fileno(), selectors.EVENT_READ)
    deadline: float | None = None
    while sel.get_map():
        if deadline is None and child.poll() is not None:
            _kill_group(child.pid)
            if cgroup is not None:
                cgroup.kill_all(wait=0)
            deadline = time.monotonic() + DRAIN_SECONDS
        timeout = 0.5 if deadline is None else max(deadline - time.monotonic(), 0)
        if deadline is not None and timeout == 0:
            break
        for key, _ in sel.select(timeout):
            fd = int(key.fd)
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if data:
                writers[fd].write(data)
            else:
                sel.unregister(fd)
    sel.close()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    task_dir = Path(args[0])
    spec = json.loads((task_dir / "spec.json").read_text())
    logs = task_dir / "logs"
    name = spec["name"]
    cgroup = TaskCgroup.from_doc(spec["cgroup"]) if spec.get("cgroup") else None
    try:
        child = _start(spec, cgroup)
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        if isinstance(e, subprocess.SubprocessError) and "preexec_fn" in reason:
            reason = "it could not join its cgroup or become its user"
        print(f"error cannot run {spec['argv'][0]!r}: {reason}", flush=True)
        if cgroup is not None:
            cgroup.remove()
        return 127

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    started = time.time_ns()
    write_json(task_dir / "state.json", {"shim_pid": os.getpid(), "pid": child.pid,
                                         "pgid": child.pid, "started_at_ns": started})
    print(f"ok {child.pid}", flush=True)
    sys.stdout.close()
    os.close(1)
    max_bytes, max_files = int(spec["log_max_bytes"]), int(spec["log_max_files"])
    assert child.stdout is not None
    assert child.stderr is not None
    writers = {
        child.stdout.fileno(): RotatingWriter(logs, f"{name}.stdout", max_bytes=max_bytes,
                                              max_files=max_files),
        child.stderr.fileno(): RotatingWriter(logs, f"{name}.stderr", max_bytes=max_bytes,
                                              max_files=max_files),
    }
    _pump(child, writers, cgroup)
    status = child.wait()
    _kill_group(child.pid)
    oom_killed = False
    if cgroup is not None:  # what left the process group goes too; then the cgroup
        oom_killed = cgroup.oom_kills() > 0
        cgroup.remove()
    for w in writers.values():
        w.close()
    code, sig = (status, 0) if status >= 0 else (128 - status, -status)
    write_json(task_dir / "exit.json", {"exit_code": code, "signal": sig,
                                        "oom_killed": oom_killed,
                                        "finished_at_ns": time.time_ns()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
