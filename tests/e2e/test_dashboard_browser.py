"""The web dashboard in a real browser (Debian's chromium, driven by Playwright) against a
real ``billow server`` with real Dask processes.

One server (its watchdog, so its meter, every second) and one cluster of Alice (team
etl) serve both tests: Alice logs in, sees her cluster come up live, opens its logs,
stops it from the page and watches it reach ``stopped``, then sees a usage chart whose
total is what ``billow usage`` prints; Mo (team ml) logs in and sees none of it.
Screenshots go to ``tests/artifacts/`` (git-ignored), printed at the end of each test.
"""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.processes import EmbeddedServer, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


class Deployment:
    """A server with teams etl (alice) and ml (mo), and Alice's cluster."""

    def __init__(self, server: EmbeddedServer) -> None:
        self.server = server
        self.tokens: dict[str, str] = {}
        with httpx.Client(base_url=server.url, timeout=30) as http:
            admin = {"Authorization": f"Bearer {server.token}"}
            for team, name in (("etl", "alice"), ("ml", "mo")):
                http.post("/v1/admin/teams", json={"name": team}, headers=admin)
                made = http.post(
                    "/v1/admin/users", json={"name": name, "team": team}, headers=admin
                )
                assert made.status_code == 201, made.text
                self.tokens[name] = made.json()["token"]
            created = http.post(
                "/v1/clusters",
                json={"name": "etl-daily", "n_workers": 1},
                headers=self.auth("alice"),
            )
            assert created.status_code == 201, created.text
            self.cluster_id = created.json()["id"]

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def get(self, who: str, path: str) -> Any:
        with httpx.Client(base_url=self.server.url, timeout=30) as http:
            answer = http.get(path, headers=self.auth(who))
            answer.raise_for_status()
            return answer.json()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    server = EmbeddedServer(
        tmp_path_factory.mktemp("dashboard"),
        env={"BILLOW_REAPER_INTERVAL": "1s", "BILLOW_HEARTBEAT_INTERVAL": "1s"},
    ).start()
    try:
        yield Deployment(server)
    finally:
        server.stop()
        server.kill_instances()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def _page(browser: Any, errors: list[str]) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(60_000)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page


def _login(page: Any, url: str, token: str) -> None:
    page.goto(url + "/ui/")
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#nav:not([hidden])")
    assert token not in page.url
    stored = page.evaluate("sessionStorage.getItem('billow.token')")
    assert stored == token
    assert page.evaluate("localStorage.length") == 0


def _shot(page: Any, name: str, shots: list[Path]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    # a new token is shown once on the page: masked in the picture
    page.screenshot(path=str(path), full_page=True, mask=[page.locator("#new-token")])
    shots.append(path)


def _cli_total(server: EmbeddedServer, token: str) -> str:
    env = {
        **os.environ,
        "BILLOW_SERVER": server.url,
        "BILLOW_TOKEN": token,
        "BILLOW_LOGIN_FILE": str(server.root / "nobody.yaml"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "billow.cli", "usage", "--csv"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    (total,) = [r for r in rows if r["group"] == "total"]
    return total["cpu_hours"]


def test_a_member_watches_stops_and_pays_for_her_cluster(
    deployment: Deployment, browser: Any
) -> None:
    errors: list[str] = []
    shots: list[Path] = []
    page = _page(browser, errors)
    _login(page, deployment.server.url, deployment.tokens["alice"])
    row = page.locator('tr[data-cluster="etl-daily"]')
    status = row.locator('[data-field="status"]')
    status.wait_for()
    # the page polls: the status goes live to ready without a reload (expect polls from
    # Python: the page's CSP refuses the eval that wait_for_function needs)
    expect(status).to_have_text("ready", timeout=120_000)
    assert row.locator("a", has_text="dashboard").count() == 1
    _shot(page, "clusters", shots)

    row.locator('[data-action="logs"]').click()
    page.wait_for_selector("#logs-panel:not([hidden])")
    logs = page.locator("#logs").text_content() or ""
    assert "== scheduler" in logs and "(scheduler, running)" in logs, logs[:500]
    _shot(page, "logs", shots)

    page.once(
        "dialog", lambda d: d.accept() if "Stop cluster etl-daily" in d.message else d.dismiss()
    )
    row.locator('[data-action="stop"]').click()
    expect(status).to_have_text("stopped", timeout=120_000)
    assert row.locator('[data-action="stop"]').count() == 0

    # the meter closes the instances' records within a pass or two: wait for a stable total
    seen: list[float] = []

    def stable() -> bool:
        usage = deployment.get("alice", "/v1/usage")["metered"]
        seen.append(usage["total"]["cpu_hours"])
        return seen[-1] > 0 and len(seen) >= 2 and seen[-1] == seen[-2]

    wait_until(stable, 30, "metered usage to settle", interval=1.5)
    cli_total = _cli_total(deployment.server, deployment.tokens["alice"])

    page.click("#nav-usage")
    page.wait_for_selector("#usage-chart canvas")
    expect(page.locator("#usage-chart")).to_have_attribute("data-total", re.compile(r"\d"))
    chart_total = page.locator("#usage-chart").get_attribute("data-total")
    shown = page.locator("#usage-total").text_content()
    assert chart_total is not None and float(chart_total) == pytest.approx(
        float(cli_total), abs=2e-6
    )
    assert shown is not None and float(shown) == pytest.approx(float(cli_total), abs=2e-6)
    series = page.evaluate("window.billowChart.data.slice(1).flat()")
    assert sum(series) == pytest.approx(float(cli_total), abs=2e-6)
    assert page.locator("[data-quota='user:cpu_hours'] .quota-fill").count() == 1
    assert "Invoices are for team admins" in (page.locator("#invoice").text_content() or "")
    _shot(page, "usage", shots)

    page.click("#nav-tokens")
    page.wait_for_selector("#token-rows tr")
    page.fill("#token-name", "browser-made")
    page.click("#token-form button[type=submit]")
    page.wait_for_selector("#new-token:not([hidden])")
    made_id = (page.locator("#new-token").text_content() or "").split()[2]
    page.locator(f'tr[data-token="{made_id}"]').wait_for()
    _shot(page, "tokens", shots)
    page.once("dialog", lambda d: d.accept())
    page.locator(f'tr[data-token="{made_id}"] [data-action="revoke"]').click()
    page.locator(f'tr[data-token="{made_id}"]').wait_for(state="detached")
    tokens = deployment.get("alice", "/v1/tokens")["tokens"]
    assert made_id not in {t["id"] for t in tokens}
    # the deployment admin sees every team, the price so far and the invoice preview
    admin = _page(browser, errors)
    _login(admin, deployment.server.url, deployment.server.token)
    admin.click("#nav-usage")
    admin.wait_for_selector("#spend-chart:not([hidden]) canvas")
    expect(admin.locator("#invoice")).to_contain_text("team etl")
    expect(admin.locator("#invoice")).to_contain_text("CPU-hours 0-10,000 (free)")
    assert float(admin.locator("#usage-total").text_content() or "0") >= float(cli_total)
    _shot(admin, "usage-admin", shots)
    assert errors == [], errors
    print("screenshots:", *shots, sep="\n  ")


def test_another_teams_member_does_not_see_the_cluster(
    deployment: Deployment, browser: Any
) -> None:
    errors: list[str] = []
    shots: list[Path] = []
    page = _page(browser, errors)
    _login(page, deployment.server.url, deployment.tokens["mo"])
    page.wait_for_selector("#clusters:not([hidden])")
    page.wait_for_timeout(2500)  # at least one poll of the list
    assert page.locator("#cluster-rows tr").count() == 0
    assert deployment.cluster_id not in page.content()
    page.click("#nav-usage")
    expect(page.locator("#usage-total")).not_to_have_text("-")
    assert float(page.locator("#usage-total").text_content() or "nan") == 0.0
    _shot(page, "other-team", shots)
    assert errors == [], errors
    print("screenshots:", *shots, sep="\n  ")
