"""Twenty subscribers race for a coupon with five uses, through gunicorn: exactly five get it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import requests
import sqlalchemy as sa

from tests.live.conftest import Live


def test_coupon_total_limit_under_concurrency(live: Live) -> None:
    from accounts import services
    from accounts.subscribers import touch
    from store import catalogue, coupons
    from store import services as store_services
    from store.models import Coupon, Order
    from wechat_service.dbtypes import utcnow
    from wechat_service.extensions import db

    fields, _ = live.create_account("plain", kind="mini_program")
    appid = fields["appid"]
    tokens = []
    for i in range(20):
        code = requests.post(
            f"{live.sim}/_sim/accounts/{appid}/js-codes", json={"openid": f"oRUSH{i:08d}"}, timeout=5
        ).json()["code"]
        tokens.append(
            requests.post(f"{live.base}/api/mp/{appid}/session", json={"code": code}, timeout=5).json()[
                "token"
            ]
        )

    def setup() -> int:
        account = services.account_by_appid(appid)
        for i in range(20):
            sub = touch(account.id, f"oRUSH{i:08d}", None)
            store_services.bind_phone(account.id, sub.id, f"1380014{1000 + i}", method="sms")
        product = catalogue.add_product(
            account_id=account.id, code="v1", name="voucher", kind="voucher", price_fen=1000
        )
        coupons.add_coupon(
            account.id,
            code="RUSH",
            name="rush",
            kind="fixed",
            value=500,
            total_limit=5,
            valid_from=utcnow() - timedelta(hours=1),
            valid_until=utcnow() + timedelta(hours=1),
        )
        db.session.commit()
        return product.id

    product_id = live.in_app(setup)

    def attempt(i: int) -> int:
        # No merchant is configured: the order is created (or refused) before any payment step.
        resp = requests.post(
            f"{live.base}/api/mp/{appid}/orders",
            timeout=30,
            headers={"Authorization": f"Bearer {tokens[i]}"},
            json={"product_id": product_id, "client_key": f"rush-key-{i:04d}", "coupon": "RUSH"},
        )
        return resp.status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(attempt, range(20)))
    assert statuses.count(409) == 15, statuses  # the other fifteen: sold out
    assert live.scalar(sa.select(Coupon.used_count)) == 5
    assert live.scalar(sa.select(sa.func.count()).select_from(Order).where(Order.discount_fen == 500)) == 5


def test_per_subscriber_limit_under_concurrency(live: Live) -> None:
    """Eight concurrent orders from one subscriber for a product limited to one: one order."""
    from accounts import services
    from accounts.subscribers import touch
    from store import catalogue
    from store import services as store_services
    from store.models import Order
    from wechat_service.extensions import db

    fields, _ = live.create_account("plain", kind="mini_program")
    appid = fields["appid"]
    code = requests.post(
        f"{live.sim}/_sim/accounts/{appid}/js-codes", json={"openid": "oONCE0000001"}, timeout=5
    ).json()["code"]
    token = requests.post(f"{live.base}/api/mp/{appid}/session", json={"code": code}, timeout=5).json()[
        "token"
    ]

    def setup() -> int:
        account = services.account_by_appid(appid)
        sub = touch(account.id, "oONCE0000001", None)
        store_services.bind_phone(account.id, sub.id, "13800141999", method="sms")
        product = catalogue.add_product(
            account_id=account.id,
            code="once",
            name="once",
            kind="voucher",
            price_fen=100,
            per_subscriber_limit=1,
        )
        db.session.commit()
        return product.id

    product_id = live.in_app(setup)

    def attempt(i: int) -> int:
        return requests.post(
            f"{live.base}/api/mp/{appid}/orders",
            timeout=30,
            headers={"Authorization": f"Bearer {token}"},
            json={"product_id": product_id, "client_key": f"once-key-{i:04d}"},
        ).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(attempt, range(8)))
    assert statuses.count(409) == 7, statuses
    assert live.scalar(sa.select(sa.func.count()).select_from(Order)) == 1
