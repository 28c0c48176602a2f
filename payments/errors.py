"""The payments domain's machine codes (``ServiceError.code``); the generic and shared ones are
``wechat_service.errors.ErrorCode``. Values are the API's strings and never change. (The codes a
payment provider answers with, carried in ``PaymentProviderError``, are the provider's, not these.)"""

from __future__ import annotations

import enum


class PaymentErrorCode(enum.StrEnum):
    merchant_misconfigured = "merchant_misconfigured"  # stored merchant settings that cannot be used
