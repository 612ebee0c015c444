"""The management listener serves the web page's files with a strict content security policy; the page
itself is tested in a browser by interop/test_web_page.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from leveret.broker.management.server import serve_management
from leveret.broker.node import Node
from leveret.config import Config


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    node = Node(Config(), clock=trio.current_time)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve_management, node, "127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=binds[0]) as client:
            yield client
        nursery.cancel_scope.cancel()


async def test_the_page_is_served_at_the_root_without_credentials(http: httpx.AsyncClient) -> None:
    # The page holds no data: it asks for credentials itself and sends them with each API call.
    response = await http.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script src="static/app.js" defer></script>' in response.text
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("path", "media_type", "marker"),
    [("/static/app.js", "text/javascript", "function h("), ("/static/style.css", "text/css", ":root")],
)
async def test_the_script_and_style_sheet_are_served(
    http: httpx.AsyncClient, path: str, media_type: str, marker: str
) -> None:
    response = await http.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == f"{media_type}; charset=utf-8"
    assert marker in response.text


@pytest.mark.parametrize(
    "path", ["/static/nothing.js", "/static/index.html", "/static/..%2Fweb.py", "/static/%2E%2E%2Fapp.py"]
)
async def test_only_the_pages_files_are_served(http: httpx.AsyncClient, path: str) -> None:
    assert (await http.get(path)).status_code == 404


async def test_the_page_is_read_only(http: httpx.AsyncClient) -> None:
    response = await http.post("/", content=b"x")
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}
