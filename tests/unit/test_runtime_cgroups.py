"""cgroups for process tasks on fake hierarchies (v2 and v1): detection, limits, OOM."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.runtime.cgroups import (
    CgroupError,
    Hierarchy,
    TaskCgroup,
    cgroup_name,
    cpu_shares,
    cpu_weight,
    own_cgroups,
)


def v2_tree(root: Path, controllers: str = "cpuset cpu io memory pids") -> Path:
    root.mkdir()
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def v1_tree(root: Path, own: str = "/") -> tuple[Path, Path]:
    for c in ("memory", "cpu"):
        d = root / c / own.lstrip("/")
        d.mkdir(parents=True)
        (root / c / "cgroup.procs").write_text("")
    proc = root.parent / "proc-self-cgroup"
    proc.write_text(f"12:memory:{own}\n4:cpu,cpuacct:{own}\n1:name=systemd:/x\n0::/\n")
    return root, proc


def test_cpu_share_conversions() -> None:
    assert cpu_shares(1000) == 1024
    assert cpu_shares(250) == 256
    assert cpu_shares(0) == 2  # the kernel's minimum
    assert cpu_weight(1000) == 1 + (1024 - 2) * 9999 // 262142  # runc's mapping: 39
    assert cpu_weight(0) == 1
    assert cpu_weight(10**9) == 10000


def test_names_are_safe_directory_names() -> None:
    assert cgroup_name("3f2a-1", "web") == "3f2a-1.web"
    assert cgroup_name("a/../b", "t x") == "a_.._b.t_x"


def test_own_cgroups_reads_every_controller() -> None:
    text = "12:memory:/a/b\n4:cpu,cpuacct:/c\n0::/unified\n"
    assert own_cgroups(text) == {"memory": "/a/b", "cpu": "/c", "cpuacct": "/c",
                                 "": "/unified"}


def test_v2_enables_controllers_and_sets_limits(tmp_path: Path) -> None:
    root = v2_tree(tmp_path / "cg")
    h = Hierarchy.detect(root=root)
    assert (h.version, h.parents) == (2, (root / "orch",))
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +memory"
    assert (root / "orch" / "cgroup.subtree_control").read_text() == "+cpu +memory"
    t = h.task("a1.web")
    t.create(cpu_millicores=500, memory_mb=64)
    d = root / "orch" / "a1.web"
    assert (d / "memory.max").read_text() == str(64 << 20)
    assert (d / "cpu.weight").read_text() == str(cpu_weight(500))
    t.set_limits(cpu_millicores=1000, memory_mb=128)
    assert (d / "memory.max").read_text() == str(128 << 20)
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\n")
    assert t.oom_kills() == 1
    assert TaskCgroup.from_doc(t.to_doc()) == t


def test_v2_without_the_memory_controller_says_so(tmp_path: Path) -> None:
    root = v2_tree(tmp_path / "cg", controllers="cpu pids")
    with pytest.raises(CgroupError, match="lacks the memory controller"):
        Hierarchy.detect(root=root)


def test_v1_nests_under_the_agents_own_cgroups(tmp_path: Path) -> None:
    root, proc = v1_tree(tmp_path / "cg", own="/system.slice/orch-agent.service")
    h = Hierarchy.detect(root=root, proc_cgroup=proc)
    assert h.version == 1
    assert h.parents == (root / "memory/system.slice/orch-agent.service/orch",
                         root / "cpu/system.slice/orch-agent.service/orch")
    t = h.task("a1.web")
    t.create(cpu_millicores=250, memory_mb=32)
    mem, cpu = t.paths
    assert (mem / "memory.limit_in_bytes").read_text() == str(32 << 20)
    assert (cpu / "cpu.shares").read_text() == "256"
    assert t.oom_kills() == 0  # no memory.oom_control: unknown counts as none
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert t.oom_kills() == 3


def test_each_node_has_its_scope_and_sweeps_only_empty_task_cgroups(tmp_path: Path) -> None:
    root = v2_tree(tmp_path / "cg")
    a, b = Hierarchy.detect("node-a", root=root), Hierarchy.detect("node-b", root=root)
    assert a.parents == (root / "orch" / "node-a",)
    assert (root / "orch" / "node-a" / "cgroup.subtree_control").read_text() == "+cpu +memory"
    busy, idle, other = a.task("a1.web"), a.task("a2.web"), b.task("a3.web")
    for t in (busy, idle, other):
        t.create(cpu_millicores=100, memory_mb=16)
        (t.paths[0] / "cgroup.procs").write_text("")  # what the kernel shows: nothing runs
    (busy.paths[0] / "cgroup.procs").write_text("4242\n")
    for t in (busy, idle, other):  # fake directories hold files: rmdir needs them gone
        for f in t.paths[0].iterdir():
            if f.name != "cgroup.procs" or t is not busy:
                f.unlink()
    assert a.sweep() == 1
    assert (busy.paths[0].exists(), idle.paths[0].exists(), other.paths[0].exists()) == (
        True, False, True)


def test_no_hierarchy_is_an_error_that_says_where(tmp_path: Path) -> None:
    (tmp_path / "cg").mkdir()
    with pytest.raises(CgroupError, match="no cgroup hierarchy"):
        Hierarchy.detect(root=tmp_path / "cg")


def test_a_parent_that_cannot_be_made_is_an_error(tmp_path: Path) -> None:
    root = v2_tree(tmp_path / "cg")
    (root / "orch").write_text("a file where the parent should be")
    with pytest.raises(CgroupError, match="cannot prepare"):
        Hierarchy.detect(root=root)
