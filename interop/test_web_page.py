"""The management web page in headless Chromium (Debian's `chromium`, driven by Playwright): log in, watch a
queue fill as pika publishes, purge it with a click, list connections and channels, and show hostile names as
text.

Leveret serves the page at `/` of its management listener. With LEVERET_INTEROP_BROKER=rabbitmq the browser
gets the same files from this checkout (Playwright answers every request outside /api/) while the API calls
go to RabbitMQ's management plugin: the page must work on RabbitMQ's own API too.

Screenshots of every test are kept in $LEVERET_SCREENSHOTS (when set) or in pytest's temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pika
import pytest

from interop.brokers import Broker, ExtraUser
from interop.clients import REPO, pika_connection, unique
from interop.conftest import new_broker

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install -e '.[test]')"
)
expect = playwright_api.expect

CHROMIUM = os.environ.get("LEVERET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
STATIC = REPO / "broker" / "management" / "static"
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
USERS = (
    ExtraUser("web-monitor", "monitor-secret", ("monitoring",)),
    ExtraUser("web-untagged", "untagged-secret"),
)
XSS_NAME = "<img src=x onerror=alert(1)>"
WAIT_MS = 15_000  # RabbitMQ's counts reach its API with its stats events


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    instance = new_broker(tmp_path_factory.mktemp("web"), management=True, users=USERS)
    try:
        instance.start()
        yield instance
    finally:
        instance.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium (apt-get install chromium)")
    with playwright_api.sync_playwright() as driver:
        # Never Playwright's own browser builds: they cannot be downloaded here.
        instance = driver.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("LEVERET_SCREENSHOTS")
    folder = Path(configured) if configured else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Page:
    """One browser tab on the page, with what it has shown: alerts and other dialogs, script errors."""

    def __init__(self, tab: Any, broker: Broker, folder: Path, test_name: str) -> None:
        self.tab = tab
        self.broker = broker
        self.folder = folder
        self.test_name = test_name
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.accept_dialogs = True
        tab.on("dialog", self._dialog)
        tab.on("pageerror", lambda error: self.errors.append(str(error)))

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.accept() if self.accept_dialogs else dialog.dismiss()

    def shot(self, step: str) -> None:
        self.tab.screenshot(path=str(self.folder / f"{self.test_name}-{step}.png"), full_page=True)

    def log_in(self, username: str, password: str) -> None:
        self.tab.goto(self.broker.management_url + "/")
        self.tab.fill("#username", username)
        self.tab.fill("#password", password)
        self.tab.click("#login button[type=submit]")

    def log_in_as_guest(self, refresh_seconds: str = "1") -> None:
        self.log_in("guest", "guest")
        expect(self.tab.locator("#tabs")).to_be_visible()
        self.tab.select_option("#refresh", refresh_seconds)

    def open_tab(self, name: str) -> None:
        self.tab.click(f"#tabs a[data-tab={name}]")
        expect(self.tab.locator(f"section#{name}")).to_be_visible()

    def row(self, table: str, name: str) -> Any:
        """The row of `table` whose first name cell holds `name` exactly."""
        rows = self.tab.locator(f"#{table} tbody tr")
        return rows.filter(has=self.tab.locator("td .name", has_text=name))

    def cell(self, table: str, name: str, column: str) -> Any:
        return self.row(table, name).locator(f'td[data-label="{column}"]')


@pytest.fixture
def page(browser: Any, managed: Broker, screenshots: Path, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    if managed.kind == "rabbitmq":
        context.route(lambda url: "/api/" not in url, _serve_checkout_files)
    tab = context.new_page()
    opened = Page(tab, managed, screenshots, request.node.name)
    try:
        yield opened
        assert opened.errors == [], f"script errors on the page: {opened.errors}"
    finally:
        opened.shot("last")
        context.close()


def _serve_checkout_files(route: Any) -> None:
    path = route.request.url.split("?", 1)[0].split("/", 3)[3]
    name = path.removeprefix("static/") or "index.html"
    file = STATIC / name
    if not file.is_file() or "/" in name:
        route.fulfill(status=404, body="")
        return
    route.fulfill(status=200, body=file.read_bytes(), content_type=MEDIA_TYPES[file.suffix])


def publish(url: str, queue: str, count: int) -> None:
    with pika_connection(url) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(queue)
        for n in range(count):
            channel.basic_publish("", queue, f"message {n}".encode())


def delete_queue(url: str, queue: str) -> None:
    with pika_connection(url) as connection:
        connection.channel().queue_delete(queue)


def ready_count(url: str, queue: str) -> int:
    with pika_connection(url) as connection:
        return connection.channel().queue_declare(queue, passive=True).method.message_count


# ---- login ----------------------------------------------------------------------------------------


def test_a_wrong_password_is_refused(page: Page) -> None:
    page.log_in("guest", "not-the-password")
    expect(page.tab.locator("#login-error")).to_have_text("Login failed")
    expect(page.tab.locator("#tabs")).to_be_hidden()
    page.shot("refused")


def test_a_user_without_a_management_tag_is_refused(page: Page) -> None:
    page.log_in("web-untagged", "untagged-secret")
    expect(page.tab.locator("#login-error")).to_have_text("Not management user")
    expect(page.tab.locator("#tabs")).to_be_hidden()


def test_a_monitoring_user_logs_in_and_out(page: Page) -> None:
    page.log_in("web-monitor", "monitor-secret")
    expect(page.tab.locator("#who")).to_have_text("web-monitor (monitoring)")
    expect(page.tab.locator("#totals .card").first).to_be_visible()
    page.tab.reload()  # the login holds for the tab's session
    expect(page.tab.locator("#who")).to_have_text("web-monitor (monitoring)")
    page.tab.click("#logout")
    expect(page.tab.locator("#login")).to_be_visible()
    page.tab.reload()
    expect(page.tab.locator("#login")).to_be_visible()


# ---- queues ---------------------------------------------------------------------------------------


def test_a_queue_appears_after_a_publish_and_its_count_follows(page: Page) -> None:
    name = unique("web-fill")
    page.log_in_as_guest()
    page.open_tab("queues")
    publish(page.broker.url, name, 3)
    expect(page.cell("queue-table", name, "Ready")).to_have_text("3", timeout=WAIT_MS)
    page.shot("three")
    publish(page.broker.url, name, 2)
    expect(page.cell("queue-table", name, "Ready")).to_have_text("5", timeout=WAIT_MS)
    expect(page.cell("queue-table", name, "Total")).to_have_text("5")
    expect(page.cell("queue-table", name, "Consumers")).to_have_text("0")
    page.tab.fill("#queue-filter", name)
    expect(page.tab.locator("#queue-table tbody tr")).to_have_count(1)
    page.shot("five")
    delete_queue(page.broker.url, name)
    expect(page.row("queue-table", name)).to_have_count(0, timeout=WAIT_MS)


def test_the_overview_counts_and_charts_queued_messages(page: Page) -> None:
    name = unique("web-overview")
    publish(page.broker.url, name, 4)
    try:
        page.log_in_as_guest()
        ready = page.tab.locator('#queued-chart [data-series="ready"]')
        expect(ready).not_to_have_text("–", timeout=WAIT_MS)
        expect(page.tab.locator("#queued-chart polyline").first).to_be_attached(timeout=WAIT_MS)
        overview = httpx.get(f"{page.broker.management_url}/api/overview", auth=("guest", "guest")).json()
        assert overview["queue_totals"]["messages_ready"] >= 4
        expect(page.tab.locator("#totals")).to_contain_text("Queues")
        page.shot("overview")
    finally:
        delete_queue(page.broker.url, name)


def test_a_queue_is_purged_with_a_click(page: Page) -> None:
    name = unique("web-purge")
    publish(page.broker.url, name, 4)
    try:
        page.log_in_as_guest()
        page.open_tab("queues")
        expect(page.cell("queue-table", name, "Ready")).to_have_text("4", timeout=WAIT_MS)
        page.shot("before")
        page.row("queue-table", name).locator("button.purge").click()
        notice = page.tab.locator("#notice")
        expect(notice).to_be_visible()
        page.shot("after")
        assert page.dialogs == [f'confirm: Purge every ready message of queue "{name}" in virtual host "/"?']
        if _purge_is_missing(page.broker, name):
            expect(notice).to_contain_text(f'Purge of queue "{name}" failed: ')
            pytest.xfail("this branch's API has no DELETE /api/queues/{vhost}/{name}/contents yet")
        expect(notice).to_have_text(f'Queue "{name}" purged. ×')
        expect(page.cell("queue-table", name, "Ready")).to_have_text("0", timeout=WAIT_MS)
        assert ready_count(page.broker.url, name) == 0
    finally:
        delete_queue(page.broker.url, name)


def _purge_is_missing(broker: Broker, name: str) -> bool:
    url = f"{broker.management_url}/api/queues/%2F/{name}/contents"
    return httpx.delete(url, auth=("guest", "guest")).status_code in (404, 405)


def test_a_cancelled_purge_keeps_the_messages(page: Page) -> None:
    name = unique("web-cancel")
    publish(page.broker.url, name, 2)
    try:
        page.log_in_as_guest()
        page.open_tab("queues")
        expect(page.cell("queue-table", name, "Ready")).to_have_text("2", timeout=WAIT_MS)
        page.accept_dialogs = False
        page.row("queue-table", name).locator("button.purge").click()
        assert len(page.dialogs) == 1
        expect(page.tab.locator("#notice")).to_be_hidden()
        assert ready_count(page.broker.url, name) == 2
    finally:
        delete_queue(page.broker.url, name)


def test_a_failed_purge_is_shown_on_the_page(page: Page) -> None:
    name = unique("web-gone")
    publish(page.broker.url, name, 1)
    page.log_in_as_guest(refresh_seconds="30")  # no refresh removes the row before the click
    page.open_tab("queues")
    expect(page.row("queue-table", name)).to_have_count(1, timeout=WAIT_MS)
    delete_queue(page.broker.url, name)
    page.row("queue-table", name).locator("button.purge").click()
    expect(page.tab.locator("#notice")).to_have_text(f'Purge of queue "{name}" failed: 404 Not Found ×')
    expect(page.tab.locator("#notice")).to_have_class("error")
    expect(page.row("queue-table", name)).to_have_count(0, timeout=WAIT_MS)  # the page refreshed after it
    page.shot("failed")


def test_hostile_queue_names_are_shown_as_text(page: Page) -> None:
    name = f"{XSS_NAME} {unique('web-xss')}"
    publish(page.broker.url, name, 1)
    try:
        page.log_in_as_guest()
        page.open_tab("queues")
        expect(page.cell("queue-table", name, "Name")).to_have_text(name, timeout=WAIT_MS)
        # Parsed as markup, the name would have become an <img> element (whose onerror the page's CSP would
        # then block on Leveret): there must be no element, only text.
        assert page.tab.locator("#queue-table img").count() == 0
        page.accept_dialogs = False
        page.row("queue-table", name).locator("button.purge").click()
        assert page.dialogs == [f'confirm: Purge every ready message of queue "{name}" in virtual host "/"?']
        page.tab.wait_for_timeout(1500)  # a refresh or two: any alert(1) would have been recorded
        assert not any(d.startswith("alert") for d in page.dialogs)
        page.shot("xss")
    finally:
        delete_queue(page.broker.url, name)


def test_queue_rates_are_the_apis_or_none(page: Page) -> None:
    name = unique("web-rates")
    publish(page.broker.url, name, 20)
    try:
        page.log_in_as_guest()
        page.open_tab("queues")
        incoming = page.cell("queue-table", name, "Incoming")
        expect(incoming).to_have_count(1, timeout=WAIT_MS)
        url = f"{page.broker.management_url}/api/queues/%2F/{name}"
        stats = httpx.get(url, auth=("guest", "guest")).json().get("message_stats")
        if stats is None:  # an API without message_stats: the page shows no rate rather than a made-up one
            expect(incoming).to_have_text("–")
        else:
            expect(incoming).to_have_text(re.compile(r"^\d+\.\d/s$"), timeout=WAIT_MS)
    finally:
        delete_queue(page.broker.url, name)


def test_rates_come_from_details_else_from_successive_counters(page: Page) -> None:
    page.log_in_as_guest(refresh_seconds="30")
    computed = page.tab.evaluate(
        """() => {
            const rates = new Rates();
            rates.begin(); rates.now = 1000;
            const first = rates.of("q", {publish: 10}, "publish");
            rates.begin(); rates.now = 3000;
            const later = rates.of("q", {publish: 30}, "publish");
            const other = rates.of("r", {publish: 5}, "publish");
            const given = rates.of("q", {publish: 30, publish_details: {rate: 4.5}}, "publish");
            rates.begin(); rates.now = 4000;
            const reset = rates.of("q", {publish: 2}, "publish");
            return [first, later, other, given, reset, rates.of("q", {}, "ack")];
        }"""
    )
    # No rate from one sample; (30 - 10) / 2 s; a counter seen once; the API's own rate first; a counter that
    # went back (the queue was deleted and declared again) is no negative rate; no counter, no rate.
    assert computed == [None, 10, None, 4.5, 0, None]


# ---- exchanges, connections, channels -------------------------------------------------------------


def test_exchanges_are_listed(page: Page) -> None:
    page.log_in_as_guest()
    page.open_tab("exchanges")
    expect(page.row("exchange-table", "amq.topic").locator('td[data-label="Type"]')).to_have_text("topic")
    expect(page.tab.locator("#exchange-table")).to_contain_text("(AMQP default)")


def test_connections_and_channels_are_listed(page: Page) -> None:
    given = unique("web-conn")
    parameters = pika.URLParameters(page.broker.url)
    parameters.client_properties = {"connection_name": given}
    connection = pika.BlockingConnection(parameters)
    try:
        first, second = connection.channel(), connection.channel()
        second.confirm_delivery()
        second.basic_qos(prefetch_count=7)
        page.log_in_as_guest()
        page.open_tab("connections")
        row = page.tab.locator("#connection-table tbody tr").filter(has_text=given)
        expect(row).to_have_count(1, timeout=WAIT_MS)
        expect(row.locator('td[data-label="Channels"]')).to_have_text("2")
        expect(row.locator('td[data-label="User"]')).to_have_text("guest")
        expect(row.locator('td[data-label="Client"]')).to_contain_text("Pika")
        page.shot("connections")
        connection_name = row.locator("td .name").inner_text()
        page.open_tab("channels")
        ours = page.tab.locator("#channel-table tbody tr").filter(has_text=connection_name)
        expect(ours).to_have_count(2, timeout=WAIT_MS)
        confirming = ours.filter(has_text=f"{connection_name} ({second.channel_number})")
        expect(confirming.locator('td[data-label="Mode"]')).to_have_text("C")
        expect(confirming.locator('td[data-label="Prefetch"]')).to_have_text("7")
        assert first.is_open
        page.shot("channels")
        connection.close()
        page.open_tab("connections")
        expect(row).to_have_count(0, timeout=WAIT_MS)
    finally:
        if connection.is_open:
            connection.close()
