"""The campaign editor in a real browser: its script is a static file (no inline code, so a
strict Content-Security-Policy holds), it draws the template's fields, previews and counts the
audience; a template from WeChat whose content closes the script element runs nothing."""

from __future__ import annotations

import re
from typing import Any

import requests

from tests import helpers
from tests.live.conftest import Live

PASSWORD = "browser editor password 1"
EVIL = "{{first.DATA}}</script><script>alert(1)</script>\n套餐：{{keyword1.DATA}}"


def test_the_editor_works_from_its_static_script_and_stays_inert(live: Live, browser: Any, shot: Any) -> None:
    env = {**live.env, "WECHAT_SERVICE_NEW_USER_PASSWORD": PASSWORD}
    helpers.run_checked(helpers.cli("user", "create-admin", "--username", "editor"), env)
    fields, _ = live.create_account("plain", name="Editor Test")
    appid = fields["appid"]

    def seed() -> None:
        from accounts import services as account_services
        from templates_msg import services

        account = account_services.account_by_appid(appid)
        helpers.seed_campaign_account(live.sim, account.id, appid, 7, "oED" + appid[-6:])
        requests.post(
            f"{live.sim}/_sim/accounts/{appid}/templates",
            json={
                "templates": [
                    helpers.CAMPAIGN_TEMPLATE,
                    {"template_id": "TPL_EVIL", "title": "恶意", "content": EVIL, "example": ""},
                ]
            },
            timeout=10,
        ).raise_for_status()
        services.sync_templates(account.id)
        from wechat_service.extensions import db

        db.session.commit()

    live.in_app(seed)

    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    dialogs: list[str] = []
    errors: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{live.base}/console/login")
    page.fill("input[name=username]", "editor")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/console/$"))

    page.goto(f"{live.base}/console/campaigns/new")
    assert page.locator("script:not([src]):not([type='application/json'])").count() == 0
    page.check("input[name=account_ids]")
    page.select_option("select[name=template_id]", "TPL_EVIL")
    page.fill("input[name=f_first]", "你好")
    assert page.inner_text("#preview").startswith("你好</script><script>alert(1)</script>")
    page.select_option("select[name=template_id]", "TPL_PROMO")
    assert page.locator("#fields input").count() == 4
    page.fill("input[name=f_keyword1]", "10G 流量包")
    assert "套餐名称：10G 流量包" in page.inner_text("#preview")
    # A locator wait, not wait_for_function: the CSP forbids the eval Playwright would use.
    page.locator("#audience", has_text="recipients").wait_for()
    assert page.inner_text("#audience").startswith("7 recipients")
    shot(page, "campaign-editor")
    assert dialogs == [] and errors == []
    context.close()
