"""gunicorn's access log without the secrets WeChat and OAuth put in query strings.

A callback URL carries ``signature``/``msg_signature`` with the ``timestamp`` and ``nonce`` they
sign (and the GET check's ``echostr``); an OAuth return carries a single-use ``code``. Logged,
they let anyone who reads the log replay a request inside the timestamp window, so the access
log keeps the path and every other parameter and drops these.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from gunicorn.glogging import Logger

if TYPE_CHECKING:
    from gunicorn.glogging import _AtomsDict

SENSITIVE = frozenset({"signature", "msg_signature", "timestamp", "nonce", "echostr", "openid", "code"})


def redact_query(query: str) -> str:
    """The query string without the sensitive parameters (kept in their order otherwise)."""
    if not query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(k, v) for k, v in pairs if k.lower() not in SENSITIVE])


def redact_uri(uri: str) -> str:
    if "?" not in uri:
        return uri
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(query=redact_query(parts.query)))


class RedactingLogger(Logger):
    """``--logger-class wechat_service.accesslog.RedactingLogger``: the request line (``%(r)s``),
    the query (``%(q)s``) and the referer (``%(f)s``) without the sensitive parameters."""

    def atoms(self, resp: Any, req: Any, environ: MutableMapping[str, Any], request_time: Any) -> _AtomsDict:
        atoms = super().atoms(resp, req, environ, request_time)
        uri = redact_uri(environ.get("RAW_URI") or "")
        atoms["r"] = f"{environ['REQUEST_METHOD']} {uri} {environ['SERVER_PROTOCOL']}"
        atoms["q"] = redact_query(environ.get("QUERY_STRING") or "")
        atoms["f"] = redact_uri(atoms.get("f") or "-")
        # The same values reachable through %({name}e)s / %({name}i)s in a custom format (keys the
        # stubs' TypedDict of atoms does not name).
        extra = cast("dict[str, Any]", atoms)
        for key in ("{query_string}e", "{raw_uri}e", "{request_uri}e", "{referer}i"):
            if isinstance(extra.get(key), str):
                extra[key] = (redact_query if key == "{query_string}e" else redact_uri)(extra[key])
        return atoms
