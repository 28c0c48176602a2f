"""Browser-facing security: a cookie per area (console, H5) and the response headers
(Content-Security-Policy with a per-request nonce, and friends).

Why not flask-talisman: it keeps one policy per app (or per decorated view) and by default also
forces HTTPS redirects and rewrites the session cookie's flags, which create_app and config
already own (Secure only in production, SameSite=Lax). We need one policy per area — console,
H5 (WeChat's JS-SDK host), JSON answers — chosen by path, which is a short after_request hook.
"""

from __future__ import annotations

import secrets

from flask import Flask, Response, has_request_context, request
from flask.sessions import SecureCookieSessionInterface

H5_PREFIX = "/h5/"
H5_COOKIE = "ws_h5"
# WeChat serves its JS-SDK (jweixin) from res.wx.qq.com, with res2.wx.qq.com as the fallback
# its docs name; H5 pages must be able to load it from there (WeChat requires its own host).
WECHAT_JSSDK_HOSTS = "https://res.wx.qq.com https://res2.wx.qq.com"
_NONCE_KEY = "wechat_service.csp_nonce"


class AreaSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, but the subscriber's H5 pages keep theirs in a cookie of
    their own (its own name, path /h5/), so signing in or out of the console in the same browser
    never touches the subscriber's store session, and the reverse."""

    def _h5(self) -> bool:
        return has_request_context() and request.path.startswith(H5_PREFIX)

    def get_cookie_name(self, app: Flask) -> str:
        return H5_COOKIE if self._h5() else super().get_cookie_name(app)

    def get_cookie_path(self, app: Flask) -> str:
        return H5_PREFIX if self._h5() else super().get_cookie_path(app)


def csp_nonce() -> str:
    """This response's script/style nonce (templates: ``nonce="{{ csp_nonce() }}"``)."""
    env = request.environ
    if _NONCE_KEY not in env:
        env[_NONCE_KEY] = secrets.token_urlsafe(18)
    return env[_NONCE_KEY]


def content_security_policy(path: str, html: bool, nonce: str | None) -> str:
    """The policy for a response: H5 pages, console (and any other HTML) pages, or data."""
    if not html:
        # JSON, XML, CSV, images: nothing in them may run, nobody may frame them.
        return "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
    scripts = "'self'" + (f" 'nonce-{nonce}'" if nonce else "")
    common = [
        "default-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        # WeChat opens H5 pages top-level (its browser, a mini-program's web-view): no framing.
        "frame-ancestors 'none'",
    ]
    if path.startswith(H5_PREFIX):
        # No form-action here: checkout may answer a form POST with a redirect to Alipay.
        return "; ".join([*common, f"script-src {scripts} {WECHAT_JSSDK_HOSTS}", f"style-src {scripts}"])
    return "; ".join([*common, f"script-src {scripts}", f"style-src {scripts}", "form-action 'self'"])


def init_app(app: Flask) -> None:
    app.session_interface = AreaSessionInterface()
    app.jinja_env.globals["csp_nonce"] = csp_nonce

    @app.after_request
    def _security_headers(response: Response) -> Response:
        html = response.mimetype == "text/html"
        nonce = request.environ.get(_NONCE_KEY)
        response.headers.setdefault(
            "Content-Security-Policy", content_security_policy(request.path, html, nonce)
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if html:
            response.headers.setdefault("X-Frame-Options", "DENY")  # for browsers without CSP 3
        return response
