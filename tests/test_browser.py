"""A real browser (Debian's headless Chromium through its chromedriver): the dashboard, and a
page on a second origin calling the router with fetch(), plain and streamed."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.conftest import ALICE
from tests.fakes import LiveStack

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail("chromium/chromium-driver missing: `make test` should have installed them")
        pytest.skip("Debian's chromium and chromium-driver are not installed here")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="llm-router-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,900",
                 f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: Any, predicate: Any, timeout: float = 10) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: predicate(d))


@pytest.fixture
def stack() -> Iterator[LiveStack]:
    s = LiveStack()
    yield s
    s.close()


def test_dashboard_loads_shows_targets_and_updates(browser: Any, stack: LiveStack) -> None:
    from selenium.webdriver.common.by import By

    page = httpx.get(stack.url + "/dashboard")  # the page itself needs no key
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text.replace(stack.url, "")  # nothing loaded from outside

    browser.get(stack.url + "/dashboard?key=alice-secret")
    rows = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#targets tbody tr"))
    text = browser.find_element(By.ID, "targets").text
    assert "p0/up-0" in text and "p0#0" in text and "p0#1" in text and "closed" in text
    assert len(rows) == 2

    for _ in range(4):
        r = httpx.post(stack.url + "/v1/chat/completions", json={"model": "g"}, headers=ALICE)
        assert r.status_code == 200

    def requests_shown(d: Any) -> bool:
        return d.find_element(By.ID, "total-requests").text == "4"

    wait_for(browser, requests_shown)
    cells = browser.find_elements(By.CSS_SELECTOR, "#targets tbody td.requests")
    assert sorted(c.text for c in cells) == ["2", "2"]
    assert "alice" in browser.find_element(By.ID, "clients").text
    shot = os.environ.get("LLM_ROUTER_SCREENSHOT")  # set to refresh the README's picture
    browser.save_screenshot(shot or str(Path(tempfile.gettempdir()) / "dashboard.png"))


def test_dashboard_with_a_wrong_key_says_so(browser: Any, stack: LiveStack) -> None:
    from selenium.webdriver.common.by import By

    browser.get(stack.url + "/dashboard?key=wrong")
    wait_for(browser, lambda d: "401" in d.find_element(By.ID, "status").text)


PAGE = """<!doctype html><html><body>
<pre id="plain">…</pre><pre id="key">…</pre><pre id="stream">…</pre><pre id="error">…</pre>
<script>
const ROUTER = "%s", headers = {"Authorization": "Bearer alice-secret",
                                "Content-Type": "application/json"};
(async () => {
  try {
    const r = await fetch(ROUTER + "/v1/chat/completions", {method: "POST", headers,
      body: JSON.stringify({model: "g", messages: [{role: "user", content: "hi"}]})});
    const body = await r.json();
    document.getElementById("plain").textContent = body.choices[0].message.content;
    document.getElementById("key").textContent = r.headers.get("x-llm-router-key");
    const s = await fetch(ROUTER + "/v1/chat/completions", {method: "POST", headers,
      body: JSON.stringify({model: "g", stream: true, messages: [{role: "user", content: "hi"}]})});
    const reader = s.body.getReader(), decoder = new TextDecoder();
    let text = "", chunks = 0;
    for (;;) {
      const {done, value} = await reader.read();
      if (done) break;
      chunks += 1;
      text += decoder.decode(value, {stream: true});
    }
    const events = text.split("\\n\\n").filter((e) => e.startsWith("data: "));
    const words = events.filter((e) => e !== "data: [DONE]")
      .map((e) => JSON.parse(e.slice(6)).choices[0].delta.content || "").join("");
    document.getElementById("stream").textContent = `${words}|${events.at(-1)}`;
    const e = await fetch(ROUTER + "/v1/chat/completions", {method: "POST",
      headers: {"Content-Type": "application/json"}, body: "{}"});
    document.getElementById("error").textContent = `${e.status} ${(await e.json()).error.code}`;
  } catch (err) {
    document.getElementById("plain").textContent = "failed: " + err;
  }
})();
</script></body></html>"""


def test_page_on_another_origin_calls_the_router(browser: Any) -> None:
    from selenium.webdriver.common.by import By

    from tests.fakes import BackgroundLoop

    bg = BackgroundLoop()
    runner: web.AppRunner | None = None
    stack = LiveStack()
    try:

        async def start() -> int:
            nonlocal runner
            app = web.Application()

            async def page(request: web.Request) -> web.Response:
                return web.Response(text=PAGE % stack.url, content_type="text/html")

            app.router.add_get("/", page)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

        origin = f"http://127.0.0.1:{bg.run(start())}"
        assert origin != stack.url  # a second origin: the browser applies CORS
        browser.get(origin + "/")
        wait_for(browser, lambda d: d.find_element(By.ID, "error").text != "…")
        assert browser.find_element(By.ID, "plain").text == "hello"
        assert browser.find_element(By.ID, "key").text == "p0#0"  # an exposed header
        assert browser.find_element(By.ID, "stream").text == "Hello!|data: [DONE]"
        assert browser.find_element(By.ID, "error").text == "401 invalid_api_key"
    finally:
        if runner is not None:
            bg.run(runner.cleanup())
        bg.close()
        stack.close()


def test_dashboard_shows_the_response_cache(browser: Any) -> None:
    from selenium.webdriver.common.by import By

    stack = LiveStack(cache={"backend": "memory"})
    try:
        for _ in range(3):  # a miss, then two hits
            r = httpx.post(stack.url + "/v1/chat/completions", json={"model": "g"}, headers=ALICE)
            assert r.status_code == 200
        browser.get(stack.url + "/dashboard?key=alice-secret")
        wait_for(browser, lambda d: d.find_element(By.ID, "cache-entries").text == "1")
        assert browser.find_element(By.ID, "cache").is_displayed()
        assert browser.find_element(By.ID, "cache-rate").text == "66.7%"
        assert browser.find_element(By.ID, "cache-hits").text == "2 / 0 / 0"
        assert browser.find_element(By.ID, "cache-misses").text == "1 / 0"
    finally:
        stack.close()
