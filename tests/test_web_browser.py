"""The console in a real headless browser (Debian's chromium + chromedriver, via selenium).

Marked ``browser``; CI installs chromium (.ci/run). The screenshots go to the test's own
directory, or to ``docs/img`` with ``PGTIDE_SCREENSHOTS=docs/img`` (how docs/web.md's were
taken).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from docs_examples import DOCS, block_under
from pgtide_testing import missing
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route
from web_helpers import LIVE, served

import pgtide
import pgtide.web

pytestmark = pytest.mark.browser

CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

if not (CHROMEDRIVER and CHROMIUM):
    missing("chromium and chromedriver (apt-get install chromium chromium-driver)")

from selenium import webdriver  # noqa: E402 (after the skip: only needed with a browser)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


class Served:
    """The app served by uvicorn in a thread of its own (selenium blocks)."""

    def __init__(self, application: Starlette | None = None, **options: Any) -> None:
        self.app = application or pgtide.web.app(**options)
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with served(self.app) as url:
            self.url = url
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> Served:
        self._thread.start()
        assert self._ready.wait(30), "the console did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _shots(tmp_path: Path) -> Path:
    where = Path(os.environ.get("PGTIDE_SCREENSHOTS") or tmp_path / "shots")
    where.mkdir(parents=True, exist_ok=True)
    return where


def _text(driver: webdriver.Chrome, testid: str) -> str:
    """The text of an element, read in one go (live updates replace elements at any time)."""
    script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';"
    return str(driver.execute_script(script, f'[data-testid="{testid}"]')).strip()


def _click(driver: webdriver.Chrome, testid: str) -> None:
    """Click an element found and clicked in one go: a live update may replace it at any
    time, so a click on an element found earlier may land on one no longer in the page."""
    script = "const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e;"
    assert driver.execute_script(script, f'[data-testid="{testid}"]'), f"no {testid} to click"


def _updates(driver: webdriver.Chrome) -> int:
    """How many live updates the page has applied (console.js counts them)."""
    script = "return Number(document.getElementById('live').dataset.updates || 0);"
    return int(driver.execute_script(script))


def _live_text(driver: webdriver.Chrome) -> str:
    return str(driver.execute_script("return document.getElementById('live').innerText"))


def test_counter_changes_without_reload(dsn: str, browser: webdriver.Chrome) -> None:
    with Served(dsn=dsn, interval=0.5) as web:
        browser.get(web.url + "/events")
        assert _text(browser, "events-pending") == "0"
        browser.execute_script("window.__sameDocument = 42")
        WebDriverWait(browser, LIVE).until(
            lambda d: "on" in d.find_element(By.ID, "live-dot").get_attribute("class")
        )
        events = pgtide.Events(dsn=dsn)
        events.publish("hello", {"n": 1})
        events.publish("hello", {"n": 2})
        events.close()
        WebDriverWait(browser, LIVE).until(lambda d: _text(d, "events-pending") == "2")
        assert browser.execute_script("return window.__sameDocument") == 42  # no reload
        assert "hello" in _live_text(browser)


def test_retry_a_dead_event_and_see_it_done(
    dsn: str, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    fixed = threading.Event()
    events = pgtide.Events(dsn=dsn, poll_interval=0.05)

    @events.handler("send_invoice", retries=0)
    def send_invoice(event: pgtide.Event) -> dict[str, Any]:
        if not fixed.is_set():
            raise ConnectionError("the mail server refused the connection")
        return {"sent": True}

    dead = events.publish("send_invoice", {"invoice": 1042})
    events.start()
    try:
        assert events.wait(dead, timeout=10).state == "dead"
        with Served(dsn=dsn, interval=0.5) as web:
            browser.get(f"{web.url}/events/{dead}")
            assert _text(browser, "event-state") == "dead"
            assert "the mail server refused" in _text(browser, "traceback")
            browser.save_screenshot(str(_shots(tmp_path) / "web-event-dead.png"))
            fixed.set()
            _click(browser, f"retry-{dead}")
            WebDriverWait(browser, LIVE).until(lambda d: _text(d, "event-state") == "done")
            assert '"sent": true' in _live_text(browser)
    finally:
        events.close()


def _demo_data(dsn: str, tmp_path: Path) -> None:
    """A bit of everything, as the docs' screenshots show it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, total numeric)")
        conn.execute("CREATE TABLE readings (value float8)")
    pgtide.track("orders", dsn=dsn)
    for name in ("search-indexer", "cache"):
        feed = pgtide.Feed(name, ["orders"], dsn=dsn)
        for batch in feed.batches(timeout=0.05):
            batch.ack()
        feed.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 40) g")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "instrument-1.txt").write_text("1.5\n2.5\noops\n3.5\n")
    (tmp_path / "data" / "instrument-2.txt").write_text("4\n5\n")
    pgtide.FileWatcher(tmp_path / "data", table="readings", dsn=dsn, name="lab").catch_up()
    events = pgtide.Events(dsn=dsn, poll_interval=0.05)

    @events.handler("order_created")
    def created(event: pgtide.Event) -> None:
        return None

    @events.handler("send_invoice", retries=0)
    def invoice(event: pgtide.Event) -> None:
        raise ConnectionError("the mail server refused the connection")

    order_ids = events.publish_many("order_created", [{"order": n} for n in range(25)])
    invoice_id = events.publish("send_invoice", {"invoice": 1042})
    events.start()
    events.wait(invoice_id, timeout=10)
    for id_ in order_ids:
        events.wait(id_, timeout=10)
    events.close()
    with pgtide.Events(dsn=dsn) as events:
        events.publish_many("order_created", [{"order": n} for n in range(25, 31)])
        events.publish("nightly_report", None)
        events.schedule("nightly_report", "0 3 * * *", {"kind": "daily"}, tz="Europe/Paris")
        events.schedule("purge_carts", "*/15 * * * *", {"older_than": "2h"}, id="carts")


@pytest.mark.slow
@pytest.mark.timeout(180)  # every page, then the server's graceful stop (up to 15 s)
def test_screenshots_of_each_page(dsn: str, browser: webdriver.Chrome, tmp_path: Path) -> None:
    _demo_data(dsn, tmp_path)
    shots = _shots(tmp_path)
    with Served(dsn=dsn, interval=0.25) as web, pgtide.Listener(dsn=dsn) as listener:
        listener.subscribe("orders", lambda note: None)
        browser.get(web.url + "/")
        with pgtide.Events(dsn=dsn) as events:
            for n in range(12):  # a few points for the plots: one write per sample shown
                shown = _updates(browser)
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(
                        "INSERT INTO orders SELECT g, g FROM generate_series(%s::int, %s::int) g",
                        (100 + n * 100, 100 + n * 100 + 5 + 3 * n),
                    )
                events.publish("order_created", {"order": n})
                WebDriverWait(browser, LIVE).until(lambda d, seen=shown: _updates(d) > seen)
        for page in ("overview", "listeners", "feed", "events", "schedules", "ingest"):
            browser.get(web.url + ("/" if page == "overview" else f"/{page}"))
            WebDriverWait(browser, LIVE).until(
                lambda d: "on" in d.find_element(By.ID, "live-dot").get_attribute("class")
            )
            assert browser.find_elements(By.TAG_NAME, "table") or page == "overview"
            browser.save_screenshot(str(shots / f"web-{page}.png"))
        assert (shots / "web-overview.png").stat().st_size > 10_000


def test_the_docs_live_table_follows_a_feed(dsn: str, browser: webdriver.Chrome) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, item text, qty int)")
        pgtide.track("orders", dsn=dsn)
        conn.execute("INSERT INTO orders VALUES (1, 'pear', 3), (2, 'fig', 1), (3, 'kiwi', 9)")
    console = pgtide.web.app(dsn=dsn, expose=["orders"])
    page = block_under(DOCS / "web.md", "### A live table that follows a feed", "html")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await console.state.console.close()

    site = Starlette(  # the page served from the console's origin, as the docs say
        routes=[
            Route("/orders.html", lambda request: HTMLResponse(page)),
            Mount("/", app=console),
        ],
        lifespan=lifespan,
    )
    site.state.console = console.state.console

    def shown(d: webdriver.Chrome) -> list[list[str]]:
        script = (
            "return [...document.querySelectorAll('#rows tr')]"
            ".map((tr) => [...tr.children].map((td) => td.textContent));"
        )
        return sorted(d.execute_script(script))

    def in_table() -> list[list[str]]:
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT id, item, qty FROM orders").fetchall()
        return sorted([str(v) for v in row] for row in rows)

    with Served(site) as web:
        browser.get(web.url + "/orders.html")
        WebDriverWait(browser, LIVE).until(lambda d: shown(d) == in_table())
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE orders SET qty = qty + 10 WHERE id = 1")
            conn.execute("DELETE FROM orders WHERE id = 2")
            conn.execute("INSERT INTO orders VALUES (4, 'plum', 2)")
        expected = [["1", "pear", "13"], ["3", "kiwi", "9"], ["4", "plum", "2"]]
        assert in_table() == expected
        WebDriverWait(browser, LIVE).until(lambda d: shown(d) == expected)
