"""Bind mounts of host volumes into process tasks' folders, and the tmpfs of a task's
secrets (mount(2) through ctypes).

A process task has no mount namespace of its own: the process driver binds each host
volume it mounts into its ``local`` folder, where the task finds it (and a read-only
mount is read-only for it). The folder belongs to the task's user, so the target is
reached without following a link (each component opened with ``O_NOFOLLOW``, the mount
made on that open folder): a task cannot send a later bind elsewhere by planting a
symbolic link. The mounts are private (nothing propagates to or from the host) and are
detached before the task's folder is deleted; a folder that still holds one is never
deleted (the volume's data would go with it).

Binding needs CAP_SYS_ADMIN and a seccomp filter that allows mount(2): an agent without
them (not root, or in the systemd unit's sandbox) gets ``BindUnavailable``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
from pathlib import Path, PurePosixPath

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8
_UNAVAILABLE = (errno.EPERM, errno.EACCES, errno.ENOSYS)
"""mount(2) refused for want of privilege (or by a seccomp filter)."""
_ESCAPED = re.compile(r"\\([0-7]{3})")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


class BindUnavailable(OSError):
    """This agent may not make mounts (not root, or no CAP_SYS_ADMIN, or seccomp)."""


def _mount(source: str | None, target: str, flags: int, fstype: str | None = None,
           data: str | None = None) -> None:
    if _libc.mount(source.encode() if source else None, target.encode(),
                   fstype.encode() if fstype else None, flags,
                   data.encode() if data else None):
        err = ctypes.get_errno()
        cls = BindUnavailable if err in _UNAVAILABLE else OSError
        raise cls(err, f"mount {source or ''} on {target}: {os.strerror(err)}")


def bind(source: str, local: Path, rel: PurePosixPath, *, read_only: bool) -> Path:
    """Bind the folder ``source`` at ``local / rel`` (made as needed, never through a link),
    read-only when asked; returns where it is mounted."""
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    if not rel.parts:
        raise OSError(errno.EINVAL, "a volume cannot be mounted on the task's folder itself")
    parent = os.open(local, flags)
    try:
        *above, last = rel.parts
        for part in above:
            nfd = _step(parent, part, flags, local / rel)
            os.close(parent)
            parent = nfd
        target = _step(parent, last, flags, local / rel)
        try:
            _mount(source, f"/proc/self/fd/{target}", MS_BIND)
        finally:
            os.close(target)
        # the open folder is the one below the new mount: open it again to reach the mount
        # (a mount point cannot be renamed or removed, so it is the same place)
        mounted = os.open(last, flags, dir_fd=parent)
        try:
            at = f"/proc/self/fd/{mounted}"
            _mount(None, at, MS_PRIVATE)
            if read_only:
                _mount(None, at, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        except OSError:
            _libc.umount2(at.encode(), MNT_DETACH)
            raise
        finally:
            os.close(mounted)
    finally:
        os.close(parent)
    return local / rel


def mount_tmpfs(folder: Path, *, size: str, mode: int) -> None:
    """A private tmpfs (nosuid, nodev, noexec) of ``size`` on ``folder``, itself reached
    without following a link."""
    fd = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _mount("tmpfs", f"/proc/self/fd/{fd}", MS_NOSUID | MS_NODEV | MS_NOEXEC, "tmpfs",
               f"size={size},mode={mode:o}")
    finally:
        os.close(fd)
    _mount(None, str(folder), MS_PRIVATE)


def unmount(folder: Path) -> None:
    """Detach what is mounted on ``folder`` (nothing when nothing is)."""
    _libc.umount2(str(folder).encode(), MNT_DETACH | UMOUNT_NOFOLLOW)


def _step(dir_fd: int, part: str, flags: int, whole: Path) -> int:
    """The folder ``part`` in ``dir_fd`` (made when missing), opened without following a link."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(part, 0o755, dir_fd=dir_fd)
    try:
        return os.open(part, flags, dir_fd=dir_fd)
    except OSError as e:
        raise OSError(e.errno, f"{whole}: {part!r} is not a folder (a link or a file is in "
                               "the way)") from None


def mounts_under(folder: Path, mountinfo: str | None = None) -> list[str]:
    """Mount points strictly below ``folder``, deepest first (from /proc/self/mountinfo)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return []
    prefix = str(folder).rstrip("/") + "/"
    found = []
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        point = _ESCAPED.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        if point.startswith(prefix):
            found.append(point)
    return sorted(set(found), key=lambda p: (-p.count("/"), p))


def unbind_all(folder: Path) -> list[str]:
    """Detach every mount below ``folder``; returns those still there (none, normally)."""
    for point in mounts_under(folder):
        _libc.umount2(point.encode(), MNT_DETACH | UMOUNT_NOFOLLOW)
    return mounts_under(folder)


def read_only_fs(path: str) -> bool:
    """Whether ``path`` is on a read-only mount (for this process)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
