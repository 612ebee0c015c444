"""The management web page: static files (broker/management/static/) that call the JSON API from the browser.

The page holds no state on the server: it logs in with HTTP basic auth against /api/whoami, as RabbitMQ's UI
does, so every rule of the API (tags, vhost permissions, guest on loopback only) applies to it unchanged.
"""

from __future__ import annotations

from importlib.resources import files

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

# Every name on the page (queues, exchanges, users) is attacker-chosen: the script renders them as text, and
# the policy forbids inline scripts and foreign origins, so a name that slips into markup still cannot run.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
MEDIA_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


def _load() -> dict[str, bytes]:
    static = files("leveret.broker.management") / "static"
    return {name: (static / name).read_bytes() for name in MEDIA_TYPES}


def web_routes() -> list[Route]:
    """GET / (the page) and GET /static/{file}; the files are read once, when the app is built."""
    contents = _load()

    def serve(name: str) -> Response:
        return Response(contents[name], media_type=MEDIA_TYPES[name], headers=SECURITY_HEADERS)

    async def page(request: Request) -> Response:
        return serve("index.html")

    async def static(request: Request) -> Response:
        name = request.path_params["file"]
        if name not in contents or name == "index.html":
            return Response(b"Not Found", status_code=404, media_type="text/plain")
        return serve(name)

    return [Route("/", page, methods=["GET"]), Route("/static/{file}", static, methods=["GET"])]
