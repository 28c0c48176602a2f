"""The accounts domain's machine codes (``ServiceError.code``); the generic and shared ones are
``wechat_service.errors.ErrorCode``. Values are the API's strings and never change."""

from __future__ import annotations

import enum


class AccountErrorCode(enum.StrEnum):
    invalid_session = "invalid_session"  # a mini-program token that is bad, expired or revoked
    invalid_login = "invalid_login"  # wrong username, password or TOTP code
    totp_required = "totp_required"  # the password was right; the TOTP code is still to come
    wechat_error = "wechat_error"  # WeChat refused a menu or QR code the console asked for
    # the H5 front door (accounts/h5.py)
    session_required = "session_required"  # an H5 request without a session that cannot redirect
    invalid_state = "invalid_state"  # an OAuth callback whose state is unknown, used or stale
