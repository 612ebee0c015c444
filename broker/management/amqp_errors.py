"""AMQP errors raised by the domain, answered over HTTP as RabbitMQ's management API answers them.

RabbitMQ's API makes each change through an internal AMQP channel as the requesting user, then turns the
channel's error into an HTTP answer; its spelling depends on the endpoint (checked against 3.10.8):
declaring and deleting, publishing, and getting each have their own.
"""

from __future__ import annotations

from leveret.amqp.constants import ACCESS_REFUSED, NOT_FOUND
from leveret.amqp.errors import AMQPError
from leveret.broker.admin import AdminError
from leveret.broker.management.auth import NotAuthorised
from leveret.broker.management.context import ApiError, bad_request

ACCESS_REFUSED_BODY = {"error": "not_authorised", "reason": "Access refused."}


def declare_error(error: AMQPError) -> Exception:
    """Declaring, binding, deleting: 403 is 401 "Access refused.", 404 is 404 with the text, the rest 400."""
    if error.code == ACCESS_REFUSED:
        return NotAuthorised(ACCESS_REFUSED_BODY, challenge=False)
    if error.code == NOT_FOUND:
        return ApiError(404, "not_found", error.text)
    return bad_request(error.text)


def publish_error(error: AMQPError) -> Exception:
    """Publishing: always 400, the reply text with its code ("404 NOT_FOUND - no exchange ...")."""
    return bad_request(f"{error.code} {error.reply_text}")


def get_error(error: AMQPError) -> Exception:
    """Getting: 403 is 401 and 404 is 404, each with the reply text ("NOT_FOUND - no queue ..."); the rest
    400 with the code too, as publishing ("405 RESOURCE_LOCKED - cannot obtain exclusive access ...")."""
    if error.code == ACCESS_REFUSED:
        return NotAuthorised({"error": "not_authorised", "reason": error.reply_text}, challenge=False)
    if error.code == NOT_FOUND:
        return ApiError(404, "not_found", error.reply_text)
    return publish_error(error)


def admin_error(error: AdminError) -> ApiError:
    if error.missing:
        return ApiError(404, "not_found", error.reason)
    return bad_request(error.reason)
