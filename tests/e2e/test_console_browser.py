"""The console in a real browser: sign in, create an account, add a keyword rule, have the
simulator's subscriber send it, see the reply in the subscriber's history, publish a menu; a
support user sees masked data only."""

from __future__ import annotations

import re
from typing import Any

import requests
from playwright.sync_api import expect

from tests import helpers
from tests.e2e.conftest import watch_csp as _watch_csp
from tests.live.conftest import Live

ADMIN_PASSWORD = "browser admin password 1"


def _sign_in(page: Any, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/console/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/console/$"))


def test_console_end_to_end(live: Live, browser: Any, shot: Any) -> None:
    env = {**live.env, "WECHAT_SERVICE_NEW_USER_PASSWORD": ADMIN_PASSWORD}
    helpers.run_checked(helpers.cli("user", "create-admin", "--username", "boss"), env)
    fields = helpers.account_fields("safe", name="Guangdong Browser Test")

    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    csp_errors = _watch_csp(page)
    _sign_in(page, live.base, "boss", ADMIN_PASSWORD)
    shot(page, "01-overview-empty")

    # Create the account through the form.
    page.goto(f"{live.base}/console/accounts/new")
    for name in ("name", "appid", "original_id", "app_secret", "token", "aes_key"):
        page.fill(f"input[name={name}]", fields[name])
    page.select_option("select[name=message_mode]", "safe")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/console/accounts/\d+$"))
    assert "Account Guangdong Browser Test created" in page.inner_text(".flash")
    callback_url = page.inner_text("dl.facts dd code")
    assert callback_url.endswith(f"/wechat/{fields['appid']}/callback")
    assert fields["app_secret"] not in page.content() and fields["aes_key"] not in page.content()
    account_url = page.url
    shot(page, "02-account-settings")
    helpers.register_with_simulator(live.sim, fields, callback_url)

    # A keyword rule, checked with the "try a message" box.
    page.goto(f"{account_url}/replies")
    page.fill("input[name=name]", "balance")
    page.fill("input[name=keywords]", "余额, balance")
    page.fill("input[name=content]", "您的话费余额为 42.00 元")
    page.click("form.grid button[type=submit]")
    assert "Rule balance added" in page.inner_text(".flash")
    page.fill("input[name=try]", "余额")
    page.click("form.filters button")
    assert page.inner_text(".rule-name") == "balance"
    shot(page, "03-auto-replies")

    # The simulator's subscriber sends the keyword; the reply comes back encrypted, as in safe mode.
    result = live.drive(fields["appid"], "text", openid="oBROWSERsubscriber0000001", content="余额")
    assert result["reply"]["Content"] == "您的话费余额为 42.00 元" and result["reply"]["_encrypted"] == "1"

    page.goto(f"{account_url}/subscribers")
    page.click("text=oBROWSERsubscriber0000001")
    history = page.inner_text("table.history")
    assert "message" in history and "余额" in history and "您的话费余额为 42.00 元" in history
    shot(page, "04-subscriber-history")

    # Menu: fill the first button, save, publish.
    page.goto(f"{account_url}/menu")
    page.fill("input[name='0-name']", "查余额")
    page.fill("input[name='0-value']", "余额")
    page.click("text=Save menu")
    assert "Menu saved" in page.inner_text(".flash")
    page.click("text=Publish to WeChat")
    assert "Menu published" in page.inner_text(".flash")
    menu = requests.get(f"{live.sim}/_sim/accounts/{fields['appid']}", timeout=5).json()["menu"]
    assert menu == {"button": [{"name": "查余额", "type": "click", "key": "余额"}]}
    shot(page, "05-menu")

    # A support user, created and granted through the staff pages.
    page.goto(f"{live.base}/console/staff")
    page.fill("input[name=username]", "helpdesk")
    page.fill("input[name=password]", "helpdesk password 1")
    page.click("form.grid button[type=submit]")
    page.select_option("select[name=role]", "support")
    page.select_option("select[name=scope]", label="account Guangdong Browser Test")
    page.click("form.grid button[type=submit]")
    assert "support" in page.inner_text("table")
    shot(page, "06-staff-grants")
    page.goto(f"{live.base}/console/audit")
    assert "grant.add" in page.inner_text("table")
    shot(page, "07-audit-log")
    page.goto(f"{live.base}/console/")
    assert "Guangdong Browser Test" in page.inner_text("main")
    shot(page, "08-overview")
    # Pages with inline code (nonce'd) and styles: nothing blocked by the CSP.
    page.goto(f"{live.base}/console/campaigns/new")
    # The editor's script runs (it counts the audience once loaded).
    expect(page.locator("#audience")).to_have_text("pick accounts")
    page.goto(f"{live.base}/console/metrics")
    assert csp_errors == [], csp_errors
    context.close()

    # Support: masked, on a tablet.
    tablet = browser.new_context(viewport={"width": 820, "height": 1180})
    page = tablet.new_page()
    _sign_in(page, live.base, "helpdesk", "helpdesk password 1")
    page.goto(f"{account_url}/subscribers")
    listing = page.inner_text("main")
    assert "oBRO****0001" in listing and "oBROWSERsubscriber0000001" not in page.content()
    page.click("text=oBRO****0001")
    assert "oBROWSERsubscriber0000001" not in page.content()
    shot(page, "09-support-masked-tablet")
    page.fill("input[name=reason]", "customer called about balance")
    page.click("text=Reveal personal data")
    assert "oBROWSERsubscriber0000001" in page.content()
    # Support cannot change settings or see staff pages.
    page.goto(f"{live.base}/console/staff")
    assert "403" in page.inner_text("h1")
    tablet.close()
