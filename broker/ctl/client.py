"""The management HTTP API over httpx, synchronously: one call per request, errors as CtlError."""

from __future__ import annotations

import html
import json
from typing import Any
from urllib.parse import quote

import httpx

from .endpoint import Endpoint
from .errors import EX_NOPERM, ApiError, CtlError, Unreachable

Json = Any


def api_path(*segments: str) -> str:
    """/api/a/b with every segment percent-encoded: the vhost "/" is %2F, as RabbitMQ's paths want."""
    return "/api/" + "/".join(quote(segment, safe="") for segment in segments)


class ManagementClient:
    def __init__(self, endpoint: Endpoint, timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=endpoint.base_url,
            auth=(endpoint.username, endpoint.password),
            timeout=timeout,
        )

    def __enter__(self) -> ManagementClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.close()

    def get(self, path: str) -> Json:
        return self._json(self.request("GET", path))

    def put(self, path: str, body: Json) -> None:
        self.request("PUT", path, body)

    def post(self, path: str, body: Json) -> Json:
        return self._json(self.request("POST", path, body))

    def delete(self, path: str, headers: dict[str, str] | None = None) -> None:
        self.request("DELETE", path, headers=headers)

    def request(
        self, method: str, path: str, body: Json = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        content = None if body is None else json.dumps(body).encode()
        if content is not None:
            headers = {**(headers or {}), "content-type": "application/json"}
        try:
            response = self._http.request(method, path, content=content, headers=headers)
        except httpx.TimeoutException:
            raise self._unreachable(f"no answer within {self.timeout:g} s") from None
        except httpx.TransportError as error:
            raise self._unreachable(_transport_reason(error)) from None
        if response.status_code == 401:
            refusal = _api_error(method, path, response)
            raise CtlError(
                f"the management API at {self.endpoint.base_url} refused user "
                f"'{self.endpoint.username}' ({refusal.reason or refusal.error})",
                EX_NOPERM,
            )
        if response.status_code >= 400:
            raise _api_error(method, path, response)
        return response

    def _unreachable(self, reason: str) -> Unreachable:
        return Unreachable(
            f"cannot reach the management API at {self.endpoint.base_url} ({reason}); "
            "is listeners.management set?"
        )

    @staticmethod
    def _json(response: httpx.Response) -> Json:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiError(
                response.request.method,
                response.request.url.path,
                response.status_code,
                "bad answer",
                "the body is not JSON",
            ) from None


def _transport_reason(error: httpx.TransportError) -> str:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
        cause = cause.__cause__ or cause.__context__
    return str(error) or type(error).__name__


def _api_error(method: str, path: str, response: httpx.Response) -> ApiError:
    error, reason = "", ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        # RabbitMQ's reasons may be HTML-escaped and span lines: one line of plain text.
        error = str(body.get("error", ""))
        reason = " ".join(html.unescape(str(body.get("reason", ""))).split())
    if not error and not reason:
        reason = response.reason_phrase or "no body"
    return ApiError(method, path, response.status_code, error, reason, body)
