"""Daemon logs: stable JSON keys, a human line, journald priorities under systemd."""

from __future__ import annotations

import io
import json
import logging

import pytest

from orch import logs


def emit(fmt: str, *, journal: bool, monkeypatch: pytest.MonkeyPatch) -> str:
    if journal:
        monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    else:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    buf = io.StringIO()
    logs.setup("debug", fmt, stream=buf)
    log = logging.getLogger("gossip")
    log.warning("member dead", extra={"member": "agent-3", "incarnation": 2})
    log.debug("detail")
    logging.getLogger().handlers.clear()
    return buf.getvalue()


def test_json_lines_have_stable_keys_and_the_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = emit("json", journal=False, monkeypatch=monkeypatch).splitlines()
    rec = json.loads(first)
    assert list(rec)[:4] == ["ts", "level", "component", "msg"]
    assert (rec["level"], rec["component"], rec["msg"]) == ("warning", "gossip", "member dead")
    assert (rec["member"], rec["incarnation"]) == ("agent-3", 2)
    assert rec["ts"].endswith("Z")
    assert json.loads(second)["level"] == "debug"


def test_human_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    line = emit("human", journal=False, monkeypatch=monkeypatch).splitlines()[0]
    assert "WARNING gossip" in line
    assert "member dead  member=agent-3 incarnation=2" in line


def test_journald_reads_the_priority_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    warning, debug = emit("json", journal=True, monkeypatch=monkeypatch).splitlines()
    assert warning.startswith("<4>{")
    assert debug.startswith("<7>{")
    assert json.loads(warning[3:])["msg"] == "member dead"
