"""A job file's :class:`~orch.jobspec.document.Value` tree onto protobuf messages, field by field.

The reader is driven by the message descriptors of ``protos/orch/v1/job.proto``,
so the file format follows the proto without a second schema: field names are
the proto's, enums are written in lower case without their prefix (``type:
service`` for ``JOB_TYPE_SERVICE``), ``google.protobuf.Duration`` fields take
``"30s"``/``"1m30s"``, maps take mappings whose scalar values are kept as
written. Every problem is collected, none stops the walk; unknown fields
suggest the closest known name.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from orch.errors import JobSpecProblem
from orch.jobspec.document import Value
from orch.jobspec.durations import parse_duration

CONTROLLER_FIELDS = {"version", "status", "stop", "submit_time_ns", "parent", "payload"}
"""Job fields the controller sets; a job file may not."""

_ALIASES = {
    "cpu": "cpu_millicores", "memory": "memory_mb", "mem": "memory_mb",
    "group": "groups", "task_groups": "groups", "task": "tasks", "constraint": "constraints",
    "affinity": "affinities", "spread": "spreads", "service": "services", "check": "checks",
    "datacenter": "datacenters", "dc": "datacenters", "target": "targets", "ports": "network",
    "environment": "env", "command_args": "args", "image_name": "image", "update_strategy":
    "update", "restart_policy": "restart", "reschedule_policy": "reschedule", "port_label": "port",
}
"""Names people carry over from Nomad, Compose or Kubernetes, and what orch calls them."""

_T = FieldDescriptor
_INTS = {_T.TYPE_INT32, _T.TYPE_INT64, _T.TYPE_UINT32, _T.TYPE_UINT64, _T.TYPE_SINT32,
         _T.TYPE_SINT64, _T.TYPE_FIXED32, _T.TYPE_FIXED64, _T.TYPE_SFIXED32, _T.TYPE_SFIXED64}
_INT_RANGE = {
    _T.TYPE_INT32: (-(2**31), 2**31 - 1), _T.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _T.TYPE_SFIXED32: (-(2**31), 2**31 - 1), _T.TYPE_UINT32: (0, 2**32 - 1),
    _T.TYPE_FIXED32: (0, 2**32 - 1), _T.TYPE_UINT64: (0, 2**64 - 1),
    _T.TYPE_FIXED64: (0, 2**64 - 1),
}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")


class Decoder:
    """Fills messages from values, collecting problems and the line of every field path."""

    def __init__(self) -> None:
        self.problems: list[JobSpecProblem] = []
        self.lines: dict[str, int] = {}
        """Field path -> line where its value starts (YAML only)."""

    def message(self, value: Value, msg: Message, path: str, *, top: bool = False) -> None:
        """Fill ``msg`` from a mapping value."""
        self._line(path, value)
        if value.kind != "map":
            self._problem(path, f"must be a mapping of fields, got {_show(value)}", value)
            return
        desc = cast(Descriptor, msg.DESCRIPTOR)  # upb and pure-Python descriptors
        for key, item in value.data.items():
            at = _join(path, key)
            if key in value.key_lines:
                self.lines.setdefault(at, value.key_lines[key])
            fd = desc.fields_by_name.get(key)
            if fd is None:
                self._problem(at, _unknown_field(key, desc), item,
                              line=value.key_lines.get(key))
                continue
            if top and key in CONTROLLER_FIELDS:
                self._problem(at, "is set by the controller; remove it from the job file", item,
                              line=value.key_lines.get(key))
                continue
            if item.kind == "scalar" and item.data is None:
                continue  # ``key:`` with nothing after it means "not set"
            self._field(item, msg, fd, at)

    # --- one field ------------------------------------------------------------------------

    def _field(self, value: Value, msg: Message, fd: FieldDescriptor, path: str) -> None:
        self._line(path, value)
        if _is_map(fd):
            self._map(value, getattr(msg, fd.name), fd, path)
        elif fd.is_repeated:
            self._repeated(value, getattr(msg, fd.name), fd, path)
        elif fd.type == _T.TYPE_MESSAGE:
            sub = getattr(msg, fd.name)
            if _message_type(fd).full_name == "google.protobuf.Duration":
                ns = self._duration(value, path)
                if ns is not None:
                    sub.FromNanoseconds(ns)
            else:
                self.message(value, sub, path)
                sub.SetInParent()
        else:
            scalar = self._scalar(value, fd, path)
            if scalar is not None:
                setattr(msg, fd.name, scalar)

    def _repeated(self, value: Value, target: Any, fd: FieldDescriptor, path: str) -> None:
        if value.kind != "list":
            hint = f", e.g. [{value.text}]" if value.kind == "scalar" and value.text else ""
            self._problem(path, f"must be a list{hint}, got {_show(value)}", value)
            return
        for i, item in enumerate(value.data):
            at = f"{path}[{i}]"
            self._line(at, item)
            if fd.type == _T.TYPE_MESSAGE:
                self.message(item, target.add(), at)
            else:
                scalar = self._scalar(item, fd, at)
                if scalar is not None:
                    target.append(scalar)

    def _map(self, value: Value, target: Any, fd: FieldDescriptor, path: str) -> None:
        if value.kind != "map":
            self._problem(path, f"must be a mapping of names to values, got {_show(value)}",
                          value)
            return
        value_fd = _message_type(fd).fields_by_name["value"]
        for key, item in value.data.items():
            at = f"{path}.{key}" if _IDENT.match(key) else f"{path}[{key!r}]"
            if key in value.key_lines:
                self.lines.setdefault(at, value.key_lines[key])
            if value_fd.type == _T.TYPE_MESSAGE:  # pragma: no cover - no such map in job.proto
                self.message(item, target[key], at)
                continue
            scalar = self._scalar(item, value_fd, at)
            if scalar is not None:
                target[key] = scalar

    def _scalar(self, value: Value, fd: FieldDescriptor, path: str) -> Any:
        if value.kind != "scalar":
            self._problem(path, f"must be a single value, got {_show(value)}", value)
            return None
        data = value.data
        if fd.type == _T.TYPE_STRING:
            if data is None:
                self._problem(path, "must be a string, got null", value)
                return None
            return value.text
        if fd.type == _T.TYPE_BOOL:
            if isinstance(data, bool):
                return data
            self._problem(path, f"must be true or false, got {_show(value)}", value)
            return None
        if fd.type == _T.TYPE_ENUM:
            assert fd.enum_type is not None
            return self._enum(value, fd.enum_type, path)
        if fd.type in _INTS:
            if isinstance(data, float) and data.is_integer():
                data = int(data)
            if not isinstance(data, int) or isinstance(data, bool):
                self._problem(path, f"must be a whole number, got {_show(value)}", value)
                return None
            lo, hi = _INT_RANGE.get(fd.type, (-(2**63), 2**63 - 1))
            if not lo <= data <= hi:
                self._problem(path, f"must be between {lo} and {hi}, got {data}", value)
                return None
            return data
        if fd.type in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
            if isinstance(data, int | float) and not isinstance(data, bool):
                return float(data)
            self._problem(path, f"must be a number, got {_show(value)}", value)
            return None
        raise TypeError(f"unsupported field type {fd.type} at {path}")  # pragma: no cover

    def _enum(self, value: Value, enum: EnumDescriptor, path: str) -> int | None:
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
        names = {v.name.removeprefix(prefix).lower(): v.number for v in enum.values
                 if v.number != 0}
        text = value.text
        if isinstance(value.data, str) and text in names:
            return names[text]
        choices = ", ".join(names)
        close = difflib.get_close_matches(text.lower(), list(names), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        self._problem(path, f"must be one of {choices}, got {_show(value)}{hint}", value)
        return None

    def _duration(self, value: Value, path: str) -> int | None:
        if value.kind != "scalar" or not isinstance(value.data, str):
            self._problem(path, f'must be a duration such as "30s" or "1m30s", got '
                                f"{_show(value)}", value)
            return None
        try:
            ns = parse_duration(value.data)
        except ValueError as e:
            self._problem(path, str(e), value)
            return None
        if ns < 0:
            self._problem(path, f"must not be negative, got {value.text!r}", value)
            return None
        return ns

    # --- bookkeeping ----------------------------------------------------------------------

    def _line(self, path: str, value: Value) -> None:
        if value.line is not None:
            self.lines.setdefault(path, value.line)

    def _problem(self, path: str, message: str, value: Value, *, line: int | None = None) -> None:
        self.problems.append(JobSpecProblem(path, message, line if line is not None
                                            else value.line))


def _message_type(fd: FieldDescriptor) -> Descriptor:
    assert fd.message_type is not None, fd.full_name
    return fd.message_type


def _is_map(fd: FieldDescriptor) -> bool:
    return (fd.type == _T.TYPE_MESSAGE and fd.is_repeated
            and _message_type(fd).GetOptions().map_entry)


def _unknown_field(key: str, desc: Descriptor) -> str:
    names = [f.name for f in desc.fields if not (desc.name == "Job" and f.name in
                                                 CONTROLLER_FIELDS)]
    alias = _ALIASES.get(key)
    if alias in names:
        return f"unknown field; did you mean {alias!r}?"
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f"unknown field; did you mean {close[0]!r}?"
    return f"unknown field (known: {', '.join(sorted(names))})"


def _show(value: Value) -> str:
    if value.kind == "map":
        return "a mapping"
    if value.kind == "list":
        return "a list"
    if value.data is None:
        return "null"
    if isinstance(value.data, str):
        return repr(value.text)
    return value.text


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
