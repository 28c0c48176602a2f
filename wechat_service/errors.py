"""Domain errors and the one JSON error shape: {"error": {"code", "message", "fields"}}."""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Callable
from typing import Any

from flask import Flask, current_app, jsonify, redirect, render_template, request, url_for
from marshmallow import ValidationError as SchemaValidationError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ErrorCode(enum.StrEnum):
    """The base's machine codes: the generic ones, those shared by several domains, and those the
    base's own modules raise. Each domain keeps its own codes in its ``errors`` module (e.g.
    ``store.errors.StoreErrorCode``); a value is defined once, in the lowest package that needs it.
    Members are ``str``s equal to their value, so the JSON body and ``== "not_found"`` are unchanged."""

    error = "error"
    invalid_input = "invalid_input"
    not_found = "not_found"
    conflict = "conflict"
    forbidden = "forbidden"
    internal_error = "internal_error"
    # WeChat (or another outside system) refused, or could not be reached
    upstream_error = "upstream_error"
    upstream_unavailable = "upstream_unavailable"
    # a single-use code from WeChat (OAuth, wx.login, phone number) was wrong, expired or used
    invalid_code = "invalid_code"
    code_used = "code_used"
    # shared by several domains
    too_many_attempts = "too_many_attempts"
    invalid_transition = "invalid_transition"


class ServiceError(Exception):
    """A domain error with a machine code (a member of a ``StrEnum``: ``ErrorCode`` or a domain's own
    ``…ErrorCode`` in its ``errors`` module) and an HTTP status."""

    code: enum.StrEnum = ErrorCode.error
    status = 400

    def __init__(
        self,
        message: str,
        *,
        code: enum.StrEnum | None = None,
        status: int | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.status = status or self.status
        self.fields = fields or {}


class InvalidInputError(ServiceError):
    code = ErrorCode.invalid_input
    status = 400


class NotFoundError(ServiceError):
    code = ErrorCode.not_found
    status = 404


class ConflictError(ServiceError):
    code = ErrorCode.conflict
    status = 409


class ForbiddenError(ServiceError):
    code = ErrorCode.forbidden
    status = 403


def error_body(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


# Other page families (prefix → renderer of an HTTP status) register here, so the shell does not
# import the domains that own them: e.g. the H5 store answers in Chinese on its own template.
ERROR_PAGES: dict[str, Callable[[int], Any]] = {}


def register_error_page(prefix: str, render: Callable[[int], Any]) -> None:
    ERROR_PAGES[prefix] = render


# Outside systems (WeChat, the BOSS, payment providers) fail in their own exception types; each is
# registered here with its name, so their failure is a 502 (it answered with an error) or a 503
# (unreachable, busy, timed out: try later) in the one error shape — never a 500. Each gateway
# registers its own types on import: the WeChat gateway, the BOSS, the payment providers.
UPSTREAM_ERRORS: list[tuple[type[BaseException], str, Callable[[Any], bool]]] = []


def register_upstream_error(
    exc_type: type[BaseException], system: str, unavailable: Callable[[Any], bool] = lambda _exc: True
) -> None:
    """``unavailable(exc)`` tells a 503 (retry later) from a 502 (the system refused)."""
    UPSTREAM_ERRORS.insert(0, (exc_type, system, unavailable))  # later, more specific ones first


def upstream_error(exc: BaseException) -> tuple[int, dict[str, Any]] | None:
    """The status and body for an outside system's failure, or None for any other exception."""
    for exc_type, system, unavailable in UPSTREAM_ERRORS:
        if isinstance(exc, exc_type):
            if unavailable(exc):
                return 503, error_body(
                    ErrorCode.upstream_unavailable, f"{system} is unavailable; try again later"
                )
            return 502, error_body(ErrorCode.upstream_error, f"{system} refused the request")
    return None


def _wants_page() -> bool:
    """Console pages (and registered page families) get an HTML error page; the rest JSON."""
    return request.path.startswith(("/console", *ERROR_PAGES))


def _page(status: int, title: str, message: str):  # type: ignore[no-untyped-def]
    for prefix, render in ERROR_PAGES.items():
        if request.path.startswith(prefix):
            return render(status)
    if status == 401:
        return redirect(url_for("console.login", next=request.full_path))
    return render_template("error.html", status=status, title=title, message=message), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError):  # type: ignore[no-untyped-def]
        if _wants_page():
            return _page(exc.status, exc.code.replace("_", " "), exc.message)
        return jsonify(error_body(exc.code, exc.message, exc.fields)), exc.status

    @app.errorhandler(SchemaValidationError)
    def _schema_error(exc: SchemaValidationError):  # type: ignore[no-untyped-def]
        fields = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        return jsonify(error_body(ErrorCode.invalid_input, "the request has invalid fields", fields)), 400

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        code = (exc.name or "error").lower().replace(" ", "_")
        if _wants_page():
            return _page(exc.code or 500, exc.name or "error", exc.description or "")
        resp = jsonify(error_body(code, exc.description or exc.name))
        resp.status_code = exc.code or 500
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        upstream = upstream_error(exc)
        if upstream is not None:
            status, body = upstream
            log.warning("%s: %s", body["error"]["message"], type(exc).__name__)
            if _wants_page():
                return _page(status, body["error"]["code"].replace("_", " "), body["error"]["message"])
            resp = jsonify(body)
            resp.status_code = status
            if status == 503:
                resp.headers["Retry-After"] = "30"
            return resp
        if current_app.testing:
            raise exc
        incident = uuid.uuid4().hex[:12]
        log.exception("unhandled error, incident %s", incident)
        return jsonify(error_body(ErrorCode.internal_error, f"internal error (incident {incident})")), 500
