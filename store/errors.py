"""The store domain's machine codes (``ServiceError.code``); the generic and shared ones are
``wechat_service.errors.ErrorCode``. Values are the API's strings and never change."""

from __future__ import annotations

import enum


class StoreErrorCode(enum.StrEnum):
    # ordering
    not_on_sale = "not_on_sale"
    phone_required = "phone_required"  # bind a phone number first (orders, redemption)
    limit_reached = "limit_reached"  # the product's per-subscriber purchase limit
    sold_out = "sold_out"
    coupon_not_applicable = "coupon_not_applicable"
    # points exchange through the BOSS
    not_exchangeable = "not_exchangeable"
    insufficient_points = "insufficient_points"
    boss_refused = "boss_refused"
    boss_unavailable = "boss_unavailable"
    # phone binding: our SMS quotas, the mini-program's phone code, the BOSS's answers
    phone_sms_limited = "phone_sms_limited"
    account_sms_limited = "account_sms_limited"
    appid_mismatch = "appid_mismatch"
    boss_unknown_number = "boss_unknown_number"
    boss_invalid_code = "boss_invalid_code"
    boss_code_expired = "boss_code_expired"
    boss_too_many_attempts = "boss_too_many_attempts"
    boss_rate_limited = "boss_rate_limited"
    # redemption-code batches
    already_exported = "already_exported"
    export_mismatch = "export_mismatch"
    # the H5 store's pages
    payment_unavailable = "payment_unavailable"
    link_expired = "link_expired"
