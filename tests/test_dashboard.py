"""``ailf dashboard``: its API, its guards, and the page in a real headless browser.

The browser test drives Debian's chromium through selenium and chromedriver; it is
skipped only where they are not installed (``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
from runtime_helpers import Echo

from ailf import Agent, Message, RedisConfig, Runtime
from ailf._dashboard import Dashboard
from ailf.errors import ConfigError

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


class Picky(Agent):
    """Fails while ``Picky.failing``, on the only delivery it gets: a dead letter each."""

    max_deliveries = 1
    failing = True

    async def on_message(self, message: Message) -> Any:
        if Picky.failing:
            raise ValueError("not today")
        return message.body


def request(url: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(
        urllib.request.Request(url, data=data, headers=headers or {}), timeout=10
    ) as response:
        return json.loads(response.read())


def status_code(url: str, body: Any = None, headers: dict[str, str] | None = None) -> int:
    try:
        request(url, body, headers)
    except urllib.error.HTTPError as exc:
        return exc.code
    return 200


async def start_namespace(runtime: Runtime) -> None:
    """Five messages handled by ``echo``, one dead letter of ``picky``."""
    Picky.failing = True
    await runtime.spawn(Echo, name="echo", replicas=2)
    await runtime.spawn(Picky, name="picky")
    for n in range(5):
        await runtime.send("echo", {"n": n})
    await runtime.send("picky", {"please": 1})
    await runtime.wait_idle(timeout=10)


def test_a_dashboard_elsewhere_than_loopback_needs_a_token(redis_config: RedisConfig) -> None:
    with pytest.raises(ConfigError, match="--token"):
        Dashboard(redis_config, "shown", host="0.0.0.0", port=0)


async def test_the_api_shows_the_namespace_and_guards_its_actions(
    redis_config: RedisConfig,
) -> None:
    async with Runtime(redis_config, namespace="shown", heartbeat_interval=0.1) as runtime:
        await start_namespace(runtime)
        with Dashboard(redis_config, "shown", port=0) as dashboard:
            base = f"http://127.0.0.1:{dashboard.port}"

            def check() -> None:
                status = request(base + "/api/status")
                for _ in range(50):
                    agents = {a["name"]: a for a in (status["view"] or {}).get("agents", [])}
                    if agents.get("echo", {}).get("handled") == 5:
                        break
                    trio.from_thread.run(trio.sleep, 0.1)
                    status = request(base + "/api/status")
                assert agents["echo"]["replicas"] == 2
                assert agents["picky"]["dead_letters"] == 1
                letters = request(base + "/api/dead-letters?agent=picky")
                assert [letter["body"] for letter in letters] == [{"please": 1}]
                # A change needs the header (a cross-site form cannot send it) and a
                # loopback Host (no DNS rebinding).
                purge = base + "/api/purge"
                assert status_code(purge, {"agent": "picky", "ids": []}) == 403
                rebound = {"Host": "evil.example:80", "X-Ailf-Dashboard": "1"}
                assert status_code(purge, {"agent": "picky", "ids": []}, rebound) == 403
                assert status_code(base + "/nowhere") == 404

            await trio.to_thread.run_sync(check)
        assert len(await runtime.dead_letters("picky")) == 1


async def test_a_token_is_needed_on_every_request_when_set(redis_config: RedisConfig) -> None:
    with Dashboard(redis_config, "shown", port=0, token="s3cret") as dashboard:
        base = f"http://127.0.0.1:{dashboard.port}"

        def check() -> None:
            assert status_code(base + "/api/status") == 401
            assert status_code(base + "/api/status?token=wrong") == 401
            assert request(base + "/api/status?token=s3cret")["namespace"] == "shown"
            bearer = {"Authorization": "Bearer s3cret"}
            assert request(base + "/api/status", headers=bearer)["namespace"] == "shown"

        await trio.to_thread.run_sync(check)
        assert dashboard.url.endswith("/?token=s3cret")


@contextmanager
def headless_chromium() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs chromium and chromedriver (apt-get install chromium chromium-driver;"
    " .ci/run installs them)",
)
async def test_the_page_in_a_browser_shows_the_agents_and_redrives_a_dead_letter(
    redis_config: RedisConfig,
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    async with Runtime(redis_config, namespace="shown", heartbeat_interval=0.1) as runtime:
        await start_namespace(runtime)
        with Dashboard(redis_config, "shown", port=0) as dashboard:

            def browse() -> None:
                with headless_chromium() as driver:
                    # The page rebuilds its agents and processes tables every second: an
                    # element found there may be gone by the next call, so each look is
                    # one script, and a click is tried again on a stale element.
                    wait = WebDriverWait(
                        driver, 20, ignored_exceptions=(StaleElementReferenceException,)
                    )

                    def text(selector: str, attribute: str = "textContent") -> str:
                        return str(
                            driver.execute_script(
                                "const found = document.querySelector(arguments[0]);"
                                " return found ? found[arguments[1]] : '';",
                                selector,
                                attribute,
                            )
                        )

                    def cell(agent: str, column: str) -> str:
                        return text(f'#agents tr[data-agent="{agent}"] td.{column}')

                    def click(selector: str) -> bool:
                        driver.find_element(By.CSS_SELECTOR, selector).click()
                        return True

                    driver.get(dashboard.url)
                    wait.until(lambda _: cell("echo", "handled") == "5")
                    assert cell("echo", "replicas") == "2"
                    assert cell("echo", "processes") == "1"
                    assert cell("picky", "dead-letters") == "1"
                    assert text("#processes tbody tr td") == runtime.process_id
                    wait.until(
                        lambda _: click('#agents tr[data-agent="picky"] button.show-letters')
                    )
                    row = wait.until(
                        expected_conditions.presence_of_element_located(
                            (By.CSS_SELECTOR, "#letters-table tr[data-dead-letter]")
                        )
                    )
                    assert '{"please":1}' in row.text
                    assert "not today" in row.text
                    Picky.failing = False  # the redriven message is handled this time
                    row.find_element(By.CSS_SELECTOR, "button.redrive").click()
                    wait.until(expected_conditions.alert_is_present()).accept()
                    wait.until(lambda _: driver.find_element(By.ID, "notice").text == "1 redriven")
                    wait.until(lambda _: cell("picky", "handled") == "1")
                    assert cell("picky", "dead-letters") == "0"

            await trio.to_thread.run_sync(browse)
        assert await runtime.dead_letters("picky") == []


def test_the_command_prints_its_address_serves_and_stops_on_ctrl_c(
    redis_config: RedisConfig,
) -> None:
    command = [sys.executable, "-m", "ailf", "dashboard", "-n", "shown", "--port", "0"]
    with subprocess.Popen(
        [*command, "--redis", redis_config.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            url = line.rsplit(" ", 1)[-1].strip()
            assert url.startswith("http://localhost:"), line
            assert request(url + "api/status")["namespace"] == "shown"
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
