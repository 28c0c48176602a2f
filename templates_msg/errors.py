"""The template-message domain's machine codes (``ServiceError.code``); the generic and shared ones
are ``wechat_service.errors.ErrorCode``. Values are the API's strings and never change."""

from __future__ import annotations

import enum


class TemplateMsgErrorCode(enum.StrEnum):
    four_eyes = "four_eyes"  # a campaign's approver must not be who prepared (or last edited) it
