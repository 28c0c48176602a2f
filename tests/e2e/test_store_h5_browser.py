"""The H5 store in a phone-sized Chromium posing as WeChat's browser, against the live stack:
OAuth through the simulator, catalogue → product → checkout (phone binding by SMS on the way,
a coupon) → pay → the result page polls until the order is fulfilled by the worker.

Plain Chromium has no WeixinJSBridge, so the test injects the stand-in the WeChat client would
provide: its getBrandWCPayRequest hands the page's JSAPI parameters to the simulator's "subscriber
pays" action (which checks the paySign and posts the signed notification) and then calls back
with ``get_brand_wcpay_request:ok``.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from datetime import timedelta
from typing import Any

import requests
import sqlalchemy as sa
from playwright.sync_api import expect

from tests import helpers
from tests.e2e.conftest import watch_csp as _watch_csp
from tests.live.conftest import Live

WECHAT_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Mobile/15E148 MicroMessenger/8.0.47(0x18002f2f) NetType/WIFI Language/zh_CN"
)
# The WeChat client's side of JSAPI payments; __wechatClientPay is the test's Python function.
BRIDGE = """
window.WeixinJSBridge = {
  invoke: function (name, params, callback) {
    if (name !== 'getBrandWCPayRequest') { callback({ err_msg: name + ':fail' }); return; }
    window.__wechatClientPay(params).then(
      function (ok) {
        callback({ err_msg: ok ? 'get_brand_wcpay_request:ok' : 'get_brand_wcpay_request:fail' });
      },
      function () { callback({ err_msg: 'get_brand_wcpay_request:fail' }); }
    );
  }
};
"""


def test_h5_purchase_in_a_phone_browser(live: Live, browser: Any, shot: Any) -> None:
    from accounts.services import account_by_appid
    from store import catalogue, coupons
    from store.models import Order
    from wechat_service.dbtypes import utcnow
    from wechat_service.extensions import db

    fields, _ = live.create_account("plain", name="广东移动", kind="service")
    appid = fields["appid"]
    openid = "oH5BROWSER" + secrets.token_hex(6)
    phone = f"139{secrets.randbelow(10**7):07d}1"[:11]

    def setup() -> int:
        account = account_by_appid(appid)
        helpers.register_merchant(live.sim, account.id)
        product = catalogue.add_product(
            account_id=account.id,
            code="t30",
            name="30 元话费",
            kind="topup",
            price_fen=2990,
            face_value_fen=3000,
        )
        catalogue.add_product(
            account_id=account.id,
            code="d1g",
            name="1GB 流量包",
            kind="data_package",
            price_fen=1000,
            package_code="DATA_1G",
        )
        coupons.add_coupon(
            account.id,
            code="SAVE5",
            name="立减 5 元",
            kind="fixed",
            value=500,
            valid_from=utcnow() - timedelta(days=1),
            valid_until=utcnow() + timedelta(days=1),
        )
        db.session.commit()
        return product.id

    product_id = live.in_app(setup)
    requests.post(f"{live.sim}/_sim/accounts/{appid}/oauth-user", json={"openid": openid}, timeout=5)
    balance = requests.get(f"{live.sim}/_sim/boss/lines/{phone}", timeout=5).json()["balance_fen"]

    context = browser.new_context(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        user_agent=WECHAT_UA,
        locale="zh-CN",
    )
    payments: list[int] = []

    def wechat_client_pays(params: dict[str, str]) -> bool:
        resp = requests.post(
            f"{live.sim}/_sim/wechatpay/pay", json={"jsapi": params, "openid": openid}, timeout=30
        )
        payments.append(resp.status_code)
        return resp.status_code == 200

    context.expose_function("__wechatClientPay", wechat_client_pays)
    context.add_init_script(BRIDGE)
    page = context.new_page()
    csp_errors = _watch_csp(page)

    # Into the store: WeChat's authorize page sends the browser straight back with a code.
    page.goto(f"{live.base}/h5/{appid}/")
    # (Chromium keeps #wechat_redirect through the redirects; the WeChat client would drop it.)
    assert page.url.split("#")[0] == f"{live.base}/h5/{appid}/", page.url
    assert "30 元话费" in page.inner_text("main") and "¥29.90" in page.inner_text("main")
    shot(page, "h5-01-catalogue")

    page.click("text=30 元话费")
    page.wait_for_url(re.compile(rf".*/products/{product_id}$"))
    shot(page, "h5-02-product")
    page.click("text=立即购买")
    page.wait_for_url(re.compile(r".*/checkout$"))

    # No phone yet: the checkout says so and links to binding, which comes back here.
    page.fill("input[name=coupon]", "SAVE5")
    page.click("button[type=submit]")
    assert "购买前请先绑定手机号" in page.inner_text("main")
    page.click("#bind-phone")
    page.fill("input[name=phone]", phone)
    page.click("text=获取验证码")
    assert "验证码已发送" in page.inner_text("main")
    code = requests.get(f"{live.sim}/_sim/boss/sms/{phone}", timeout=5).json()["code"]
    page.fill("input[name=code]", code)
    shot(page, "h5-03-bind-phone")
    page.click("text=确认绑定")
    page.wait_for_url(re.compile(r".*/checkout$"))
    assert "手机号绑定成功" in page.inner_text("main")

    page.fill("input[name=coupon]", "save5")
    shot(page, "h5-04-checkout")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/orders/\d+/pay$"))
    assert "¥24.90" in page.inner_text("#amount") and "-¥5.00" in page.inner_text("main")
    # The page's wx.config is signed over the URL exactly as the browser has it.
    config = json.loads(page.inner_text("#wx-config"))
    ticket = requests.get(f"{live.sim}/_sim/accounts/{appid}/oauth", timeout=5).json()["jsapi_ticket"]
    url = page.url.split("#")[0]
    plain = f"jsapi_ticket={ticket}&noncestr={config['nonceStr']}&timestamp={config['timestamp']}&url={url}"
    assert config["signature"] == hashlib.sha1(plain.encode()).hexdigest()  # noqa: S324 - WeChat's definition
    shot(page, "h5-05-pay")

    page.click("#pay-button")
    page.wait_for_url(re.compile(r".*/orders/\d+$"))
    # (A locator wait: a string predicate would be eval'd in the page, which its CSP forbids.)
    expect(page.locator("#order-status")).to_have_attribute("data-status", "fulfilled", timeout=60_000)
    assert page.inner_text("#order-status") == "已完成"
    shot(page, "h5-06-result-fulfilled")
    assert payments == [200]

    order_id = int(page.url.rsplit("/", 1)[1])
    order = live.in_app(lambda: db.session.get(Order, order_id))
    assert (order.status.value, order.amount_fen, order.discount_fen) == ("fulfilled", 2490, 500)
    after = requests.get(f"{live.sim}/_sim/boss/lines/{phone}", timeout=5).json()["balance_fen"]
    assert after == balance + 3000

    page.click("nav.tabs >> text=订单")
    assert "已完成" in page.inner_text("main") and "¥24.90" in page.inner_text("main")
    shot(page, "h5-07-my-orders")
    assert live.scalar(sa.select(sa.func.count()).select_from(Order)) == 1
    assert csp_errors == [], csp_errors  # wx.config, the pay button and the polling all ran
    context.close()
