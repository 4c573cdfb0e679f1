"""promtool for the metrics tests: fails under CI=true when missing, skips elsewhere."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.components import require

HOW = "./run test installs Debian's prometheus package (apt-get install prometheus)"


def promtool() -> str:
    tool = shutil.which("promtool")
    require("promtool", tool is not None, HOW)
    assert tool is not None
    return tool


def promtool_check(text: str) -> str:
    """promtool's complaints about a scrape ("" when clean)."""
    out = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=60, check=False)
    return (out.stdout + out.stderr).strip()


def promql_problems(exprs: dict[str, str], tmp: Path) -> str:
    """promtool's complaints about PromQL expressions ("" when every one parses): each
    becomes a recording rule named after its key, and ``promtool check rules`` reads them."""
    rules = [{"record": f"check:{key}", "expr": expr} for key, expr in exprs.items()]
    path = tmp / "promql-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "check", "rules": rules}]}))  # JSON is YAML
    out = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                         text=True, timeout=60, check=False)
    return "" if out.returncode == 0 else (out.stdout + out.stderr).strip()
