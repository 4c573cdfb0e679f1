"""The web UI in a real browser: Debian's chromium, headless, driven by selenium through
Debian's chromium-driver (nothing downloaded), against a secure cluster this test starts (a
bootstrapped controller serving HTTPS, two agents joined with a token).

An operator logs in with the management token, plans then runs a job from the UI, watches
its deployment reach successful (htmx refreshing it), opens an allocation and sees a line
its task printed (server-sent events), drains a node and sees its allocations move; then,
logged in with a read-only token, is refused an action with the gate's own sentence. Each
page is saved as a screenshot under ``build/test-artifacts/ui`` (``ORCH_ARTIFACTS``
overrides the folder); docs/images holds the key ones.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.ui import WebDriverWait

from agent.server import Agent
from controller.server import Controller
from tests.components import require
from tests.integration.synthetic import wait_until
from tests.integration.test_trust import NET, agent_config, bootstrapped

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("ORCH_ARTIFACTS") or
                 Path(__file__).resolve().parents[2] / "build" / "test-artifacts") / "ui"
WAIT = 30.0

JOB = """name: hello
update: {min_healthy_time: 0s, healthy_deadline: 30s}
groups:
  - name: web
    count: 2
    tasks:
      - name: server
        driver: process
        command: /bin/sh
        args: ["-c", "echo hello from the web UI, task $ORCH_ALLOC_INDEX; exec sleep 600"]
        resources: {cpu_millicores: 50, memory_mb: 32}
"""


def spki_pin(cert_pem: bytes) -> str:
    """What chromium's --ignore-certificate-errors-spki-list takes: base64(SHA-256(SPKI))."""
    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@contextmanager
def browser(pin: str) -> Iterator[WebDriver]:
    profile = tempfile.mkdtemp(prefix="orch-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1280,1000",
                 f"--ignore-certificate-errors-spki-list={pin}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for CSP reports
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _secret(text: str) -> str:
    return next(line.split()[-1] for line in text.splitlines() if line.startswith("Secret"))


def _dump(ctl: Controller, agents: list[Agent]) -> str:
    """Where each allocation stands for the controller and for its agent (written beside
    the screenshot when the scenario fails)."""
    lines = []
    for a in ctl.cluster.state.allocs.values():
        lines.append(f"controller: {a.id[:8]} {a.name} node={a.node_id[:8]} "
                     f"desired={a.desired_status} client={a.client_status} healthy={a.healthy}")
    for agent in agents:
        link = agent.link
        lines.append(f"agent {agent.node_id[:8]}: connected={link.connected} "
                     f"applied={link.applied_version} queued={len(link._queue)} "
                     f"specs={sorted(i[:8] for i in agent._specs)}")
        lines += [f"  {s}" for s in agent.runtime.statuses()]
    return "\n".join(lines)


async def test_an_operator_drives_the_cluster_from_a_browser(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent")  # shown if it fails
    caplog.set_level(logging.INFO, logger="controller")
    require("chromium", shutil.which(CHROMIUM) is not None and shutil.which(DRIVER) is not None,
            "apt-get install chromium chromium-driver (./run test installs them)")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium never fetches a driver or a browser
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with bootstrapped(tmp_path, http_addr=f"{NET}.1:0") as (ctl, cli):
        token = (await cli("cluster", "join-token", "agent", "-q")).strip()
        agents = [Agent(agent_config(tmp_path, ctl, token, i)) for i in (1, 2)]
        for a in agents:
            await a.start()
        try:
            await wait_until(lambda: all(ctl.cluster.connected(a.node_id) for a in agents),
                             within=20)
            management = (tmp_path / "ctl/pki/operator/management.token").read_text().strip()
            viewer = _secret(await cli("acl", "token", "create", "--name", "viewer",
                                       "--policy", "read"))
            assert ctl.http is not None
            pin = spki_pin((tmp_path / "ctl/pki/cert.pem").read_bytes())
            try:
                await asyncio.to_thread(_scenario, ctl, ctl.http.url, pin, management, viewer)
            except BaseException:
                (ARTIFACTS / "state.txt").write_text(_dump(ctl, agents))
                raise
        finally:
            for a in agents:
                await a.stop(stop_tasks=True)


def _scenario(ctl: Controller, base: str, pin: str, management: str, viewer: str) -> None:
    """The browser's part, in a thread of its own (the cluster runs on the test's loop)."""
    with browser(pin) as driver:
        wait = WebDriverWait(driver, WAIT, poll_frequency=0.2,  # htmx replaces what it refreshes
                             ignored_exceptions=[StaleElementReferenceException])

        def shot(name: str) -> None:
            """The whole page (the viewport grown to its height, within reason)."""
            height = int(driver.execute_script("return document.documentElement.scrollHeight"))
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": 1280, "height": min(max(height, 700), 3000), "deviceScaleFactor": 1,
                "mobile": False})
            driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
            driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

        def text(css: str) -> str:
            return str(driver.find_element(By.CSS_SELECTOR, css).text)

        def until(check: Callable[[], bool], what: str) -> None:
            try:
                wait.until(lambda _: check(), message=what)
            except Exception:
                shot("failed")
                (ARTIFACTS / "failed.html").write_text(driver.page_source)
                raise

        def click(css: str) -> None:
            """Click the first match, again if htmx replaced it meanwhile."""
            def once() -> bool:
                try:
                    driver.find_element(By.CSS_SELECTOR, css).click()
                except StaleElementReferenceException:
                    return False
                return True
            until(once, f"clicking {css}")

        def login(secret: str) -> None:
            driver.get(f"{base}/ui/")
            until(lambda: "/ui/login" in driver.current_url, "sent to the login page")
            driver.find_element(By.ID, "token").send_keys(secret)
            shot("01-login")
            driver.find_element(By.ID, "login").click()
            until(lambda: driver.current_url.endswith("/ui/"), "the overview after login")

        # log in: the token never shows in a URL, and scripts cannot read the session cookie
        login(management)
        assert management not in driver.current_url
        assert driver.execute_script("return document.cookie") == ""
        cookie = driver.get_cookie("orch_session")
        assert cookie is not None
        assert cookie["httpOnly"]
        assert cookie["secure"]
        assert cookie["sameSite"] == "Strict"
        assert text("#token-name") == "bootstrap"
        until(lambda: "agent-1" in text("main") and "agent-2" in text("main"),
              "both nodes on the overview")
        assert text("#leader") == ctl.cfg.name
        shot("02-overview")

        # plan, then run, a job from the UI
        driver.find_element(By.LINK_TEXT, "Run a job").click()

        def plan(job: str) -> None:
            area = driver.find_element(By.ID, "jobfile")
            driver.execute_script("arguments[0].value = arguments[1]", area, job)
            page = driver.find_element(By.TAG_NAME, "html")
            driver.find_element(By.ID, "plan").click()
            wait.until(staleness_of(page), message="the plan's page")
            until(lambda: bool(driver.find_elements(By.ID, "plan-result")), "the plan")
        # a job no node has room for: the plan says why, node by node
        plan(JOB.replace("memory_mb: 32", "memory_mb: 900000"))
        assert "0 of 2 placed" in text("#plan-result")
        assert "memory" in text("#plan-result")
        shot("03-plan-unplaceable")
        plan(JOB)
        assert text("#plan-result").count("create") == 2
        shot("03-plan")
        driver.find_element(By.ID, "run").click()
        until(lambda: "/ui/job/default/hello" in driver.current_url, "the job's page")
        # the deployment's progress refreshes itself (htmx) until it succeeds: no reload
        until(lambda: text("#deployment-status") == "successful", "the deployment succeeding")
        shot("04-job")

        # an allocation: its events, and the line its task printed (server-sent events)
        click("#job-allocations td a")
        until(lambda: "hello from the web UI" in text("#logs"), "the task's log line")
        shot("05-allocation")

        # drain the node of that allocation: its allocations move to the other node
        node_link = driver.find_element(By.CSS_SELECTOR, "dl.facts a[href^='/ui/node/']")
        node_link.click()
        node_url = driver.current_url
        node_id = node_url.rsplit("/", 1)[1]
        driver.find_element(By.XPATH, "//button[normalize-space()='Drain']").click()
        until(lambda: "draining" in text("main .flash.ok"), "the drain accepted")

        def moved() -> bool:
            driver.get(node_url)
            rows = driver.find_elements(By.CSS_SELECTOR, "#node-allocations tbody tr")
            return all(" run " not in f" {r.text} " for r in rows)
        until(moved, "the drained node's allocations stopped")
        shot("06-node-drained")
        driver.get(f"{base}/ui/job/default/hello")
        until(lambda: text("#job-allocations").count("running") >= 2
              and node_id[:8] not in " ".join(
                  r.text for r in driver.find_elements(By.CSS_SELECTOR, "#job-allocations tbody tr")
                  if "running" in r.text), "the job's allocations running on the other node")
        shot("07-job-after-drain")
        for page, name in (("/ui/", "08-overview-after-drain"), ("/ui/services", "09-services"),
                           ("/ui/events", "10-events"), ("/ui/nodes", "11-nodes"),
                           ("/ui/allocations", "12-allocations")):
            driver.get(base + page)
            until(lambda: len(text("main")) > 0, page)
            shot(name)

        # log out, log in read-only: an action is refused with the gate's sentence
        driver.find_element(By.XPATH, "//button[normalize-space()='log out']").click()
        until(lambda: "/ui/login" in driver.current_url, "logged out")
        login(viewer)
        assert text("#token-name") == "viewer"
        driver.get(node_url)
        before = ctl.cluster.state.nodes[node_id].eligible
        button = driver.find_element(By.XPATH, "//button[contains(., 'eligible')]")
        assert "denied" in (button.get_attribute("class") or "")
        button.click()
        until(lambda: "refused" in text("main .flash.error"), "the refusal")
        message = text("main .flash.error")
        assert "token 'viewer' (policies: read) may not call SetNodeEligibility" in message
        assert ctl.cluster.state.nodes[node_id].eligible == before
        shot("13-refused")

        # the pages ran within their Content-Security-Policy (nothing it had to block), with
        # no script error and no missing resource
        console = driver.get_log("browser")  # type: ignore[no-untyped-call]
        assert not [e for e in console if "Content Security Policy" in e["message"]], console
        assert not [e for e in console if e["level"] == "SEVERE"], console
