"""Commands run in tasks for people (``orchctl alloc exec``), on real engines: the process
driver's and Docker's exec sessions (input, output, a terminal and its size, the exit code,
the task's user), and the whole path on real sockets: orchctl as a real process, on a pipe
and on a terminal of its own, through the controller to the agent; the exit code as
orchctl's own; a stopped allocation refused with nothing changed; the event log says who
ran what, never the stream; the limits hold."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import pwd
import signal
import struct
import sys
import termios
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NamedTuple

import grpc
import pytest

from agent.agent_service import AgentService
from agent.runtime import labels
from agent.runtime.cgroups import cgroup_name
from agent.runtime.docker import DockerDriver
from agent.runtime.driver import ExecSession, ExecSpec, TaskConfig, TaskHandle
from agent.runtime.process import ProcessDriver
from controller.server import Controller
from orch.jobspec.model import Network, Task
from orch.v1 import controller_pb2, controller_pb2_grpc, node_pb2
from tests.integration.live import Cli, live_cluster
from tests.integration.synthetic import wait_until

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parents[2]


def task_config(node: str, task: Task, data: Path, alloc_id: str = "a1") -> TaskConfig:
    net = Network()
    spec = labels.spec_hash(task, net, {})
    return TaskConfig(
        alloc_id=alloc_id, task=task, network=net, ports={}, env={"GREETING": "hello"},
        labels=labels.task_labels(alloc_id=alloc_id, alloc_name="j.g[0]", namespace="default",
                                  job="j", job_version=1, group="g", task=task, node=node,
                                  spec=spec),
        spec_hash=spec, task_dir=data / "alloc" / alloc_id / task.name, node_name=node)


Step = bytes | tuple[int, int] | None
"""Input, a terminal size (rows, cols), or the end of input."""


async def talk(session: ExecSession, *steps: Step | tuple[bytes, Step]) -> tuple[bytes, bytes, int]:
    """Carry out ``steps`` one after the other (a (text, step) pair once ``text`` shows in the
    output since the last step); then (stdout, stderr, exit code)."""
    out, err = bytearray(), bytearray()
    grew = asyncio.Event()

    async def feed() -> None:
        mark = 0
        for step in steps:
            if isinstance(step, tuple) and len(step) == 2 and isinstance(step[0], bytes):
                text, step = step
                while text not in out[mark:]:
                    grew.clear()
                    await grew.wait()
                mark = out.index(text, mark) + len(text)
            if step is None:
                await session.close_stdin()
            elif isinstance(step, tuple):
                await session.resize(*step)
            else:
                await session.write(step)

    feeder = asyncio.ensure_future(feed())
    try:
        async with asyncio.timeout(30):
            async for stream, data in session.output():
                (out if stream == "stdout" else err).extend(data)
                grew.set()
            code = await session.wait()
    finally:
        feeder.cancel()
        await session.kill()
    return bytes(out), bytes(err), code


SHELL_SCRIPT = 'echo out; echo err >&2; read line; echo "got $line from $GREETING"; exit 3'


# --- the process driver ----------------------------------------------------------------------

@pytest.fixture
async def process(tmp_path: Path) -> AsyncIterator[tuple[ProcessDriver, TaskHandle]]:
    d = ProcessDriver(tmp_path, node_id="node-exec", task_user="nobody", allow_root=False)
    await d.open()
    h = await d.start(task_config("node-exec", Task(name="t", driver="process",
                                                    command="/bin/sleep", args=("300",)),
                                  tmp_path))
    try:
        yield d, h
    finally:
        await d.stop(h, "SIGKILL", 1)
        await d.destroy(h)
        await d.close()


async def test_a_process_task_runs_a_command_with_input_and_an_exit_code(
        process: tuple[ProcessDriver, TaskHandle]) -> None:
    d, h = process
    session = await d.exec_session(h, ExecSpec(argv=("/bin/sh", "-c", SHELL_SCRIPT), stdin=True))
    out, err, code = await talk(session, b"a line\n", None)
    assert (out, err, code) == (b"out\ngot a line from hello\n", b"err\n", 3)
    who = await d.exec_session(h, ExecSpec(argv=("id", "-u")))
    uid = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else os.getuid()
    assert (await talk(who))[0] == f"{uid}\n".encode()  # the task's user
    if d.cgroups is not None:  # and inside the task's cgroup (its limits count it)
        where = await d.exec_session(h, ExecSpec(argv=("cat", "/proc/self/cgroup")))
        assert cgroup_name("a1", "t") in (await talk(where))[0].decode()
    missing = await d.exec_session(h, ExecSpec(argv=("no-such-program",)))
    assert (await talk(missing))[2] != 0


async def test_a_process_task_runs_a_command_on_a_terminal_that_resizes(
        process: tuple[ProcessDriver, TaskHandle]) -> None:
    d, h = process
    session = await d.exec_session(h, ExecSpec(argv=("/bin/sh",), tty=True, stdin=True,
                                               rows=30, cols=100, term="dumb"))
    out, _, code = await talk(session, b"stty size; echo \"T=$TERM\"; tty; echo mark-$((1+1))\n",
                              (b"mark-2", (40, 120)), b"stty size; exit 7\n")
    assert code == 7
    text = out.decode()
    assert "30 100" in text
    assert "40 120" in text
    assert "T=dumb" in text
    assert "/dev/pts/" in text


async def test_a_killed_command_ends_with_its_whole_group(
        process: tuple[ProcessDriver, TaskHandle]) -> None:
    d, h = process
    session = await d.exec_session(h, ExecSpec(argv=("/bin/sh", "-c",
                                                     "sleep 300 & echo $!; wait")))
    first = b""
    async for _, data in session.output():
        first += data
        break
    child = int(first.split()[0])
    await session.kill()
    assert await session.wait() == 128 + signal.SIGKILL
    await wait_until(lambda: not Path(f"/proc/{child}").exists(), within=5)


# --- Docker ----------------------------------------------------------------------------------

@pytest.fixture
async def container(node_id: str, docker_url: str, test_image: str,
                    tmp_path: Path) -> AsyncIterator[tuple[DockerDriver, TaskHandle]]:
    d = DockerDriver(node_id=node_id, url=docker_url)
    await d.open()
    task = Task(name="t", image=test_image, command="/bin/sleep", args=("300",), kill_timeout=1)
    h = await d.start(task_config(node_id, task, tmp_path))
    try:
        yield d, h
    finally:
        await d.stop(h, "SIGKILL", 1)
        await d.destroy(h)
        await d.close()


@pytest.mark.docker
async def test_a_container_runs_a_command_with_input_and_an_exit_code(
        container: tuple[DockerDriver, TaskHandle]) -> None:
    d, h = container
    session = await d.exec_session(h, ExecSpec(argv=("/bin/sh", "-c", SHELL_SCRIPT), stdin=True))
    out, err, code = await talk(session, b"a line\n", None)
    assert (out, err, code) == (b"out\ngot a line from hello\n", b"err\n", 3)
    out, err, code = await talk(await d.exec_session(h, ExecSpec(argv=("no-such-program",))))
    assert code in (126, 127)  # as docker exec's: the engine cannot run it
    assert b"no-such-program" in out + err


@pytest.mark.docker
async def test_a_container_runs_a_command_on_a_terminal_that_resizes(
        container: tuple[DockerDriver, TaskHandle]) -> None:
    d, h = container
    session = await d.exec_session(h, ExecSpec(argv=("/bin/sh",), tty=True, stdin=True,
                                               rows=30, cols=100, term="dumb"))
    out, _, code = await talk(session, b"stty size; echo \"T=$TERM\"; echo mark-$((1+1))\n",
                              (b"mark-2", (40, 120)), b"stty size; exit 7\n")
    assert code == 7
    text = out.decode()
    assert "30 100" in text
    assert "40 120" in text
    assert "T=dumb" in text


# --- the whole path ----------------------------------------------------------------------------

JOB = """
name: shell
update: {min_healthy_time: 0s, healthy_deadline: 60s, progress_deadline: 90s}
groups:
  - name: app
    tasks:
      - name: main
        driver: process
        command: /bin/sleep
        args: ["600"]
        env: {GREETING: hello}
        resources: {cpu_millicores: 50, memory_mb: 32}
      - name: side
        driver: process
        command: /bin/sleep
        args: ["600"]
        resources: {cpu_millicores: 50, memory_mb: 32}
"""


class Live(NamedTuple):
    ctl: Controller
    cli: Cli
    alloc: str
    """The id of the allocation the tests run commands in (job ``shell``)."""
    agent: AgentService


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Live]:
    settings = {1: {"exec_max_sessions": 2, "exec_idle_timeout": 1.5}}
    async with live_cluster(tmp_path, agents=1, net="127.0.23",
                            agent_settings=settings) as (ctl, agents):
        cli = Cli(ctl.rpc_address, tmp_path)
        job = tmp_path / "shell.yaml"
        job.write_text(JOB)
        await cli("job", "run", str(job))
        (alloc,) = ctl.cluster.state.allocs_of_job(("default", "shell"))
        service = agents[0].service
        assert service is not None
        yield Live(ctl, cli, alloc.id, service)
        await wait_until(lambda: service.execs == 0, within=10)  # every session ended


async def orchctl(cli: Cli, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchctl.main", "--address", cli.addr, *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def exec_events(ctl: Controller) -> list[controller_pb2.Event]:
    return [e for e in ctl.cluster.events.recent if e.type.startswith("AllocationExec")]


async def test_orchctl_runs_a_command_and_exits_with_its_code(
        cluster: Live) -> None:
    ctl, cli, alloc, _ = cluster
    code, out, err = await orchctl(cli, "alloc", "exec", alloc[:8], "--",
                                   "sh", "-c", "echo $GREETING; echo oops >&2; exit 4")
    assert (code, out, err) == (4, "hello\n", "oops\n")
    code, out, _ = await orchctl(cli, "alloc", "exec", "-i", alloc, "--task", "side", "--",
                                 "sh", "-c", "tr a-z A-Z; echo \"[$ORCH_TASK_NAME]\"",
                                 stdin=b"secret input\n" * 3)
    assert (code, out) == (0, "SECRET INPUT\n" * 3 + "[side]\n")
    # the event log: who ran what, where and how it ended; never what went through
    await wait_until(lambda: len(exec_events(ctl)) == 4, within=5)
    started, ended = exec_events(ctl)[2:]
    assert started.type == "AllocationExec"
    assert started.key == alloc
    assert started.allocation.job == "shell"
    assert "runs sh -c 'tr a-z A-Z; echo \"[$ORCH_TASK_NAME]\"' in task side" in started.message
    assert "from ipv4:127.0.0.1" in started.message
    assert ended.type == "AllocationExecEnded"
    assert "exit code 0 after" in ended.message
    assert all(b"secret" not in e.SerializeToString() for e in exec_events(ctl))
    listed = await cli("events", "--type", "AllocationExec", "--type", "AllocationExecEnded")
    assert "AllocationExec" in listed


async def test_orchctl_on_a_terminal_runs_a_shell_that_follows_its_size(
        cluster: Live) -> None:
    _, cli, alloc, _ = cluster
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 25, 90, 0, 0))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchctl.main", "--address", cli.addr, "alloc", "exec", "-i",
        "-t", alloc, "--", "/bin/sh", stdin=slave, stdout=slave, stderr=slave, cwd=ROOT,
        start_new_session=True)
    os.close(slave)
    got = bytearray()
    loop = asyncio.get_running_loop()

    async def until(text: bytes) -> None:
        try:
            await asyncio.wait_for(read_until(text), 20)
        except TimeoutError:
            raise AssertionError(f"waited for {text!r}; the terminal shows {bytes(got)!r}") \
                from None

    async def read_until(text: bytes) -> None:
        if True:
            while text not in got:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_reader(master, settle, ready)
                try:
                    await ready
                finally:
                    loop.remove_reader(master)
                with contextlib.suppress(OSError):
                    got.extend(os.read(master, 4096))
    try:
        os.write(master, b"stty size\n")
        await until(b"25 90")
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
        os.kill(proc.pid, signal.SIGWINCH)  # as the terminal does when its window changes
        await asyncio.sleep(0.5)
        os.write(master, b"stty size; exit 9\n")
        await until(b"33 111")
        assert await asyncio.wait_for(proc.wait(), 20) == 9
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)


async def test_a_stopped_allocation_is_refused_and_nothing_changes(
        cluster: Live) -> None:
    ctl, cli, alloc, _ = cluster
    await cli("alloc", "stop", alloc)  # a replacement is placed; this one stays stopped
    await wait_until(lambda: ctl.cluster.state.allocs[alloc].client_status
                     == node_pb2.CLIENT_STATUS_COMPLETE, within=20)
    before = ctl.cluster.state.allocs[alloc].SerializeToString()
    code, _, err = await orchctl(cli, "alloc", "exec", alloc, "--", "true")
    assert code == 1
    assert f"allocation {alloc[:8]} (shell.app[0]) is stopped (complete): a command runs only " \
           "in a running allocation" in err
    assert ctl.cluster.state.allocs[alloc].SerializeToString() == before
    assert exec_events(ctl) == []  # nothing recorded: nothing ran
    code, _, err = await orchctl(cli, "alloc", "exec", "nope", "--", "true")
    assert (code, "no allocation 'nope'" in err) == (1, True)
    code, _, err = await orchctl(cli, "alloc", "exec", alloc)
    assert (code, "no command" in err) == (2, True)


async def test_the_limits_hold(cluster: Live) -> None:
    ctl, _, alloc, service = cluster
    async with grpc.aio.insecure_channel(ctl.rpc_address) as ch:
        stub = controller_pb2_grpc.ControllerServiceStub(ch)

        def start(*argv: str, stdin: bool = False) -> controller_pb2.ExecRequest:
            return controller_pb2.ExecRequest(start=controller_pb2.ExecStart(
                alloc_id=alloc, command=argv, stdin=stdin))

        async def run(*msgs: controller_pb2.ExecRequest,
                      hold: asyncio.Event | None = None) -> list[controller_pb2.ExecResponse]:
            async def requests() -> AsyncIterator[controller_pb2.ExecRequest]:
                for m in msgs:
                    yield m
                if hold is not None:
                    await hold.wait()
            return [r async for r in stub.ExecAllocation(requests(), timeout=30)]

        # an idle command is killed after the node's exec_idle_timeout (1.5 s here)
        replies = await run(start("sleep", "60"), hold=asyncio.Event())
        assert replies[-1].exit.code == 128 + signal.SIGKILL
        assert "no input or output for 1.5s" in replies[-1].exit.error
        # an input message past the limit ends the stream, saying so
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await run(start("cat", stdin=True),
                      controller_pb2.ExecRequest(stdin=b"x" * (64 * 1024 + 1)))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "at most 65,536" in (e.value.details() or "")
        # the node runs at most exec_max_sessions (2 here) at once
        await wait_until(lambda: service.execs == 0, within=10)
        hold = asyncio.Event()
        running = [asyncio.ensure_future(run(start("sh", "-c", "echo up; exec sleep 60"),
                                             hold=hold)) for _ in range(2)]
        await wait_until(lambda: sum(1 for e in exec_events(ctl)
                                     if e.type == "AllocationExec") >= 3, within=10)
        await asyncio.sleep(0.5)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await run(start("true"))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "exec_max_sessions" in (e.value.details() or "")
        hold.set()
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        # a command too long is refused before anything runs
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await run(start("echo", "x" * (64 * 1024)))
        assert "at most 65,536" in (e.value.details() or "")
