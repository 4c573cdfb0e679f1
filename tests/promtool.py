"""promtool for the metrics tests: fails under CI=true when missing, skips elsewhere."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def promtool_check(text: str) -> str:
    """promtool's complaints about a scrape ("" when clean)."""
    tool = shutil.which("promtool")
    if tool is None:
        msg = ("promtool is missing: ./run test installs Debian's prometheus package "
               "(apt-get install prometheus)")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    out = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True,
                         timeout=60, check=False)
    return (out.stdout + out.stderr).strip()
