"""100 concurrent redemptions of one code through gunicorn: exactly one wins, and the worker
tops the line up exactly once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests
import sqlalchemy as sa

from tests.live.conftest import Live


def test_hundred_concurrent_redemptions_one_success(live: Live) -> None:
    from accounts import services
    from accounts.subscribers import touch
    from store import catalogue, redemption
    from store import services as store_services
    from store.models import Fulfilment
    from wechat_service.extensions import db

    fields, _ = live.create_account("plain", kind="mini_program")
    appid = fields["appid"]
    tokens = []
    for i in range(10):  # ten subscribers, each trying ten times at once
        code = requests.post(
            f"{live.sim}/_sim/accounts/{appid}/js-codes", json={"openid": f"oRACE{i:08d}"}, timeout=5
        ).json()["code"]
        tokens.append(
            requests.post(f"{live.base}/api/mp/{appid}/session", json={"code": code}, timeout=5).json()[
                "token"
            ]
        )
    phone = "13800139100"

    def setup() -> str:
        account = services.account_by_appid(appid)
        for i in range(10):
            sub = touch(account.id, f"oRACE{i:08d}", None)
            store_services.bind_phone(account.id, sub.id, phone, method="sms")
        product = catalogue.add_product(
            account_id=account.id,
            code="t50",
            name="50 元话费",
            kind="topup",
            price_fen=4900,
            face_value_fen=5000,
        )
        _, codes = redemption.create_batch(account.id, product.id, name="race", count=1)
        db.session.commit()
        return codes[0]

    the_code = live.in_app(setup)
    before = requests.get(f"{live.sim}/_sim/boss/lines/{phone}", timeout=5).json()["balance_fen"]

    def attempt(i: int) -> int:
        return requests.post(
            f"{live.base}/api/mp/{appid}/redeem",
            json={"code": the_code},
            headers={"Authorization": f"Bearer {tokens[i % 10]}"},
            timeout=30,
        ).status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(attempt, range(100)))
    assert statuses.count(202) == 1, statuses
    assert set(statuses) <= {202, 400, 429}
    assert live.scalar(sa.select(sa.func.count()).select_from(Fulfilment)) == 1
    live.wait_for(lambda: live.scalar(sa.select(Fulfilment.status)).value == "succeeded", 30, "the top-up")
    after = requests.get(f"{live.sim}/_sim/boss/lines/{phone}", timeout=5).json()["balance_fen"]
    assert after == before + 5000
