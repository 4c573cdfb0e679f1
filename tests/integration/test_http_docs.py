"""The curl examples of docs/http-api.md run as written, in order, against a cluster set up
as an installation sets it up (a bootstrapped controller serving HTTPS, an agent joined
with a token); every ``sh`` block of the page is one step."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import pytest

from agent.server import Agent
from tests.integration.synthetic import wait_until
from tests.integration.test_trust import NET, agent_config, bootstrapped

DOC = Path(__file__).resolve().parents[2] / "docs" / "http-api.md"


def blocks() -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


async def test_the_curl_examples_run_as_written(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is needed (apt-get install curl)")
    script = "set -euo pipefail\n" + "\n".join(blocks())
    assert script.count("curl ") >= 25
    async with bootstrapped(tmp_path, http_addr=f"{NET}.1:0") as (ctl, cli):
        token = (await cli("cluster", "join-token", "agent", "-q")).strip()
        agent = Agent(agent_config(tmp_path, ctl, token, 1))
        await agent.start()
        try:
            await wait_until(lambda: ctl.cluster.connected(agent.node_id), within=15)
            assert ctl.http is not None
            operator = tmp_path / "ctl/pki/operator"
            work = tmp_path / "work"
            work.mkdir()
            proc = await asyncio.create_subprocess_exec(
                "bash", "-c", script, cwd=work, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env={
                    **os.environ, "ORCH_HTTP": ctl.http.url,
                    "ORCH_TOKEN": (operator / "management.token").read_text().strip(),
                    "CURL_CA_BUNDLE": str(operator / "ca.pem")})
            out, _ = await asyncio.wait_for(proc.communicate(), 180)
            text = out.decode()
            assert proc.returncode == 0, text
            assert "serving" in text          # the allocation's log
            assert '"changes_anything": true' in text
            assert "ORCHTKN-1-agent-" in text  # the join token
            assert text.rstrip().endswith("401")
            assert ("default", "web") in ctl.cluster.state.jobs
            assert ctl.cluster.state.job(("default", "web")).stop  # type: ignore[union-attr]
        finally:
            await agent.stop(stop_tasks=True)
