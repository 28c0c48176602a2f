"""Auto-reply rules (matching, priority, windows, fallbacks, validation), menus (WeChat's limits,
save and publish against the simulator) and channel QR codes."""

from __future__ import annotations

import copy
import time
from datetime import timedelta
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask

from accounts import menus, qrcodes, replies, services
from accounts.models import Account, ChannelQRCode, Menu, ReplyRule, ReplyType
from tests import helpers
from wechat_service.dbtypes import utcnow
from wechat_service.errors import ConflictError, InvalidInputError, NotFoundError
from wechat_service.extensions import db
from wechat_service.gateway import WeChatAPIError


def new_account() -> int:
    return services.add_account(**helpers.account_fields("plain")).id


def version(account_id: int) -> int:
    return db.session.scalar(sa.select(Account.config_version).where(Account.id == account_id)) or 0


def match(account_id: int, text: str, **kw: Any) -> str | None:
    rule = replies.match_text(account_id, version(account_id), text, **kw)
    return rule.name if rule else None


def sim_account(simulator: str, appid: str) -> dict[str, Any]:
    resp = requests.get(f"{simulator}/_sim/accounts/{appid}", timeout=10)
    resp.raise_for_status()
    return resp.json()


# -- matching ------------------------------------------------------------------------------------


def test_exact_match_is_whole_text_case_folded_and_trimmed(app: Flask) -> None:
    aid = new_account()
    replies.add_rule(aid, name="bal", keywords=["余额", "Balance"], reply={"content": "10 元"})
    assert match(aid, "余额") == "bal"
    assert match(aid, "  BALANCE ") == "bal"
    assert match(aid, "查余额") is None
    assert match(aid, "balances") is None


def test_contains_match(app: Flask) -> None:
    aid = new_account()
    replies.add_rule(
        aid, name="bill", keywords=["bill", "账单"], match_mode="contains", reply={"content": "b"}
    )
    assert match(aid, "my BILL please") == "bill"
    assert match(aid, "查一下本月账单") == "bill"
    assert match(aid, "bil") is None


def test_regex_match(app: Flask) -> None:
    aid = new_account()
    replies.add_rule(
        aid,
        name="phone",
        keywords=[r"^1\d{10}$", r"^bind\s+\w+$"],
        match_mode="regex",
        reply={"content": "p"},
    )
    assert match(aid, "13800138000") == "phone"
    assert match(aid, "bind abc") == "phone"
    assert match(aid, "1380013800") is None
    assert match(aid, "x13800138000") is None


@pytest.mark.parametrize(
    "keywords",
    [["(?i)hello"], ["(?P<n>hi)", "(?P<n>hello)"]],
    ids=["inline-global-flag", "same-group-name-in-two-keywords"],
)
def test_a_regex_accepted_at_save_time_never_breaks_matching(app: Flask, keywords: list[str]) -> None:
    """Each keyword is checked alone when the rule is saved, so the rule must also work when the
    keywords are combined for matching (or be refused when saved) — never crash every callback."""
    aid = new_account()
    replies.add_rule(aid, name="welcome", kind="welcome", reply={"content": "hi!"})
    try:
        replies.add_rule(aid, name="re", keywords=keywords, match_mode="regex", reply={"content": "r"})
    except InvalidInputError as exc:
        assert "keywords" in exc.fields
        return
    assert match(aid, "HELLO" if keywords[0].startswith("(?i)") else "hello") == "re"
    welcome = replies.welcome_rule(aid, version(aid))
    assert welcome is not None and welcome.name == "welcome"


def test_higher_priority_wins_then_the_older_rule(app: Flask) -> None:
    aid = new_account()
    replies.add_rule(aid, name="low", keywords=["hi"], match_mode="contains", reply={"content": "1"})
    replies.add_rule(aid, name="high", keywords=["hi there"], priority=10, reply={"content": "2"})
    replies.add_rule(aid, name="low-later", keywords=["hi"], match_mode="contains", reply={"content": "3"})
    assert match(aid, "hi there") == "high"
    assert match(aid, "oh hi") == "low"


def test_active_windows(app: Flask) -> None:
    aid = new_account()
    now = utcnow()
    start, end = now + timedelta(hours=1), now + timedelta(hours=2)
    replies.add_rule(
        aid,
        name="promo",
        keywords=["x"],
        priority=5,
        active_from=start,
        active_until=end,
        reply={"content": "p"},
    )
    replies.add_rule(aid, name="always", keywords=["x"], reply={"content": "a"})
    assert match(aid, "x", now=now) == "always"
    assert match(aid, "x", now=start) == "promo"
    assert match(aid, "x", now=end - timedelta(seconds=1)) == "promo"
    assert match(aid, "x", now=end) == "always"  # the end is exclusive
    with pytest.raises(InvalidInputError) as exc:
        replies.add_rule(
            aid, name="bad", keywords=["y"], active_from=end, active_until=start, reply={"content": "b"}
        )
    assert "active_until" in exc.value.fields


def test_default_rule_is_the_fallback(app: Flask) -> None:
    aid = new_account()
    assert match(aid, "anything") is None
    replies.add_rule(aid, name="kw", keywords=["k"], reply={"content": "k"})
    replies.add_rule(aid, name="dflt", kind="default", reply={"content": "sorry"})
    replies.add_rule(aid, name="hello", kind="welcome", reply={"content": "welcome"})
    assert match(aid, "k") == "kw"
    assert match(aid, "anything") == "dflt"
    rule = replies.match_text(aid, version(aid), "anything")
    assert rule is not None and rule.reply.type == "text" and rule.reply.data == {"content": "sorry"}


def test_default_rule_outside_its_window_does_not_answer(app: Flask) -> None:
    aid = new_account()
    replies.add_rule(
        aid,
        name="dflt",
        kind="default",
        active_until=utcnow() - timedelta(minutes=1),
        reply={"content": "old"},
    )
    assert match(aid, "anything") is None


def test_welcome_rule_and_disabling(app: Flask) -> None:
    aid = new_account()
    assert replies.welcome_rule(aid, version(aid)) is None
    rule = replies.add_rule(aid, name="w", kind="welcome", reply={"content": "欢迎"})
    welcome = replies.welcome_rule(aid, version(aid))
    assert welcome is not None and welcome.reply.data == {"content": "欢迎"}
    assert match(aid, "欢迎") is None  # a welcome rule never answers text
    replies.set_rule_enabled(aid, rule.id, False)
    assert replies.welcome_rule(aid, version(aid)) is None


def test_rule_changes_bump_the_config_version(app: Flask) -> None:
    aid = new_account()
    v0 = version(aid)
    rule = replies.add_rule(aid, name="r", keywords=["a"], reply={"content": "a"})
    assert version(aid) == v0 + 1 and match(aid, "a") == "r"
    replies.set_rule_enabled(aid, rule.id, False)
    assert version(aid) == v0 + 2 and match(aid, "a") is None
    replies.set_rule_enabled(aid, rule.id, True)
    replies.delete_rule(aid, rule.id)
    assert version(aid) == v0 + 4 and match(aid, "a") is None
    assert replies.rule_count(aid) == 0


# -- rule validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"keywords": []}, "keywords"),
        ({"keywords": ["  ", ""]}, "keywords"),
        ({"keywords": ["("], "match_mode": "regex"}, "keywords"),
        ({"keywords": ["a" * 201], "match_mode": "regex"}, "keywords"),
        ({"reply": {"content": "   "}}, "reply"),
        ({"reply": {"content": "余" * 683}}, "reply"),  # 2,049 bytes
        ({"reply_type": "video"}, "reply_type"),
        ({"reply_type": "image", "reply": {}}, "reply"),
    ],
)
def test_rule_validation_errors(app: Flask, kwargs: dict[str, Any], field: str) -> None:
    aid = new_account()
    args: dict[str, Any] = {"name": "r", "keywords": ["k"], "reply": {"content": "ok"}, **kwargs}
    with pytest.raises(InvalidInputError) as exc:
        replies.add_rule(aid, **args)
    assert field in exc.value.fields
    assert replies.rule_count(aid) == 0


SLOW_PATTERNS = [r"(a+)+$", r"(a|aa)+$", r"^(\w+\s?)*$", r"(\p{Han}+)+$", r"([a-z]+)*[0-9]", r"(.*a){12}"]


@pytest.mark.parametrize("pattern", SLOW_PATTERNS)
def test_a_pathological_regex_is_refused_when_saved(app: Flask, pattern: str) -> None:
    aid = new_account()
    with pytest.raises(InvalidInputError) as exc:
        replies.add_rule(
            aid, name="slow", keywords=["ok", pattern], match_mode="regex", reply={"content": "r"}
        )
    assert "keywords" in exc.value.fields and replies.rule_count(aid) == 0


@pytest.mark.parametrize(
    "pattern",
    [r"(\d{3}){2}", r"^(?:查询)?(余额|话费)$", r"\p{Han}{2,4}", r"(?>a+)+b", r"^(ab){2,}$", r"流量|套餐"],
)
def test_sound_regexes_still_save(app: Flask, pattern: str) -> None:
    aid = new_account()
    replies.add_rule(aid, name="ok", keywords=[pattern], match_mode="regex", reply={"content": "r"})
    assert replies.rule_count(aid) == 1


def test_the_console_and_the_api_refuse_a_slow_regex_with_a_field_error(
    create_staff: Any, create_account: Any
) -> None:
    account, _, _ = create_account("plain")
    manager = create_staff("account_manager", account_id=account.id)
    resp = manager.api(
        "POST",
        f"/api/v1/accounts/{account.id}/rules",
        {"name": "slow", "keywords": [r"(a+)+$"], "match_mode": "regex", "reply": {"content": "r"}},
    )
    error = resp.get_json()["error"]
    assert resp.status_code in (400, 422) and "nested quantifiers" in " ".join(error["fields"]["keywords"])
    form = {"name": "slow", "kind": "keyword", "keywords": r"(a|aa)+$", "match_mode": "regex"}
    page = manager.form(f"/console/accounts/{account.id}/replies", {**form, "content": "r"})
    assert page.status_code == 200 and "catastrophic backtracking" in page.get_data(as_text=True)
    assert replies.rule_count(account.id) == 0


def _insert_rule(account_id: int, name: str, keywords: list[str], mode: str, **kw: Any) -> int:
    """Straight into the table, as rules saved before the checks existed."""
    rule = ReplyRule(
        account_id=account_id,
        name=name,
        kind=kw.pop("kind", "keyword"),
        keywords=keywords,
        match_mode=mode,
        priority=kw.pop("priority", 0),
        reply_type="text",
        reply={"content": name},
        enabled=True,
    )
    db.session.add(rule)
    db.session.flush()
    return rule.id


def test_slow_regex_rules_in_the_database_share_one_budget_per_message(app: Flask) -> None:
    slow_account, other = new_account(), new_account()
    slow_ids = {_insert_rule(slow_account, f"slow{i}", [r"(a+)+$"], "regex", priority=10) for i in range(40)}
    _insert_rule(slow_account, "bang", ["!"], "contains")
    _insert_rule(other, "hello", [r"^hello\b"], "regex")
    _insert_rule(other, "other default", [], "exact", kind="default")
    services.bump_config(slow_account)
    services.bump_config(other)
    db.session.flush()
    text = "a" * 1500 + "!"

    started = time.monotonic()
    # 40 patterns at their own 50 ms each were two seconds; one budget for all of them is not.
    assert match(slow_account, text) == "bang"  # the plain rule below them still answers
    assert time.monotonic() - started < 1.0
    recorded = replies.slow_rule_ids(slow_account)
    assert recorded and recorded <= slow_ids  # the ones that timed out are noted for the console

    started = time.monotonic()
    for _ in range(3):
        assert match(slow_account, text) == "bang"
    assert time.monotonic() - started < 1.0

    # Another account: its own rules, its own budget, nothing recorded against it.
    started = time.monotonic()
    assert match(other, "hello there") == "hello"
    assert match(other, text) == "other default"
    assert time.monotonic() - started < 0.5
    assert replies.slow_rule_ids(other) == set()


def test_text_limit_counts_bytes(app: Flask) -> None:
    aid = new_account()
    rule = replies.add_rule(aid, name="r", keywords=["k"], reply={"content": "余" * 682})  # 2,046 bytes
    assert rule.reply == {"content": "余" * 682}


def test_unknown_kind_or_match_mode(app: Flask) -> None:
    aid = new_account()
    for kwargs in ({"kind": "greeting"}, {"match_mode": "fuzzy"}):
        with pytest.raises(InvalidInputError):
            replies.add_rule(aid, name="r", keywords=["k"], reply={"content": "x"}, **kwargs)
    assert replies.rule_count(aid) == 0


@pytest.mark.parametrize(
    "articles",
    [
        [],
        [{"title": "t", "url": "http://a"}] * 9,
        [{"title": "no url"}],
        [{"url": "http://no.title"}],
        ["not an object"],
        "not a list",
    ],
)
def test_news_reply_validation(app: Flask, articles: Any) -> None:
    aid = new_account()
    with pytest.raises(InvalidInputError) as exc:
        replies.add_rule(aid, name="n", keywords=["k"], reply_type="news", reply={"articles": articles})
    assert exc.value.fields == {"reply": ["articles invalid"]}


def test_news_reply_is_cleaned(app: Flask) -> None:
    aid = new_account()
    rule = replies.add_rule(
        aid,
        name="n",
        keywords=["news"],
        reply_type="news",
        reply={
            "articles": [{"title": "T", "url": "https://x.test/a", "secret": "drop me", "image": "https://i"}]
        },
    )
    assert rule.reply_type is ReplyType.news
    assert rule.reply == {
        "articles": [{"title": "T", "description": "", "url": "https://x.test/a", "image": "https://i"}]
    }
    compiled = replies.match_text(aid, version(aid), "news")
    assert compiled is not None and compiled.reply.type == "news"


# -- menus ---------------------------------------------------------------------------------------------


def valid_tree() -> dict[str, Any]:
    return {
        "button": [
            {"type": "click", "name": "查余额", "key": "BALANCE"},
            {
                "name": "服务",
                "sub_button": [
                    {"type": "view", "name": "营业厅", "url": "https://shop.example.com/h5"},
                    {
                        "type": "miniprogram",
                        "name": "小程序",
                        "url": "https://shop.example.com/fallback",
                        "appid": "wx0123456789abcdef",
                        "pagepath": "pages/index/index",
                    },
                    {"type": "click", "name": "积分", "key": "POINTS"},
                ],
            },
            {"type": "view", "name": "Help", "url": "http://help.example.com"},
        ]
    }


def test_valid_menu_is_returned_clean(app: Flask) -> None:
    tree = valid_tree()
    tree["button"][0]["extra"] = "ignored"
    clean = menus.validate_menu(tree)
    assert clean == valid_tree()
    assert "extra" not in clean["button"][0]


def broken(mutate: Any) -> dict[str, Any]:
    tree = valid_tree()
    mutate(tree)
    return tree


@pytest.mark.parametrize(
    ("tree", "path"),
    [
        (broken(lambda t: t["button"].append({"type": "click", "name": "4th", "key": "K4"})), "button"),
        (broken(lambda t: t.update(button=[])), "button"),
        ({"menu": []}, "button"),
        ("not a menu", "button"),
        (
            broken(
                lambda t: t["button"][1]["sub_button"].extend(
                    [{"type": "click", "name": "s", "key": "S"}] * 3
                )
            ),
            "button[1].sub_button",
        ),
        (broken(lambda t: t["button"][0].update(name="一二三四五六")), "button[0].name"),  # 18 bytes
        (broken(lambda t: t["button"][1].update(name="x" * 17)), "button[1].name"),
        (
            broken(lambda t: t["button"][1]["sub_button"][2].update(name="字" * 21)),
            "button[1].sub_button[2].name",
        ),
        (broken(lambda t: t["button"][0].update(name="")), "button[0].name"),
        (broken(lambda t: t["button"][0].pop("key")), "button[0].key"),
        (broken(lambda t: t["button"][0].update(key="k" * 129)), "button[0].key"),
        (broken(lambda t: t["button"][2].update(url="ftp://help.example.com")), "button[2].url"),
        (broken(lambda t: t["button"][2].update(url="javascript:alert(1)")), "button[2].url"),
        (broken(lambda t: t["button"][1]["sub_button"][1].pop("appid")), "button[1].sub_button[1].appid"),
        (
            broken(lambda t: t["button"][1]["sub_button"][1].pop("pagepath")),
            "button[1].sub_button[1].pagepath",
        ),
        (broken(lambda t: t["button"][2].update(type="scancode_push")), "button[2].type"),
        (broken(lambda t: t["button"].__setitem__(2, "oops")), "button[2]"),
    ],
)
def test_menu_limits(app: Flask, tree: Any, path: str) -> None:
    with pytest.raises(InvalidInputError) as exc:
        menus.validate_menu(copy.deepcopy(tree))
    assert path in exc.value.fields


def test_names_at_the_byte_limits_pass(app: Flask) -> None:
    tree = valid_tree()
    tree["button"][0]["name"] = "一二三四五x"  # 16 bytes
    tree["button"][1]["sub_button"][2]["name"] = "字" * 20  # 60 bytes
    tree["button"][1]["sub_button"].extend([{"type": "click", "name": "s", "key": "S"}] * 2)  # 5 in all
    assert menus.validate_menu(tree)["button"][0]["name"] == "一二三四五x"


def test_every_problem_is_reported_with_its_path(app: Flask) -> None:
    tree = valid_tree()
    tree["button"][0].pop("key")
    tree["button"][2]["url"] = "www.example.com"
    with pytest.raises(InvalidInputError) as exc:
        menus.validate_menu(tree)
    assert set(exc.value.fields) == {"button[0].key", "button[2].url"}


def test_save_and_publish_menu_to_the_simulator(app: Flask, simulator: str, create_account: Any) -> None:
    account, fields, _ = create_account("plain")
    v0 = version(account.id)
    menu = menus.save_menu(account.id, valid_tree())
    db.session.commit()
    assert version(account.id) == v0 + 1
    assert menu.published_tree is None and menu.published_at is None
    menus.publish_menu(account.id)
    db.session.commit()
    sim = sim_account(simulator, fields["appid"])
    assert sim["menu"] == valid_tree() == menu.tree
    assert sim["menu_creates"] == 1
    db.session.expire_all()
    saved = db.session.scalar(sa.select(Menu).where(Menu.account_id == account.id))
    assert saved is not None and saved.published_tree == valid_tree() and saved.published_at is not None

    # Saving again replaces the draft only; WeChat keeps the published menu until the next publish.
    smaller = {"button": [{"type": "click", "name": "Only", "key": "ONLY"}]}
    menus.save_menu(account.id, smaller)
    db.session.commit()
    assert sim_account(simulator, fields["appid"])["menu"] == valid_tree()
    assert (
        db.session.scalar(sa.select(sa.func.count()).select_from(Menu).where(Menu.account_id == account.id))
        == 1
    )
    menus.publish_menu(account.id)
    sim = sim_account(simulator, fields["appid"])
    assert sim["menu"] == smaller and sim["menu_creates"] == 2


def test_an_invalid_menu_is_not_saved(app: Flask, create_account: Any) -> None:
    account, _, _ = create_account("plain")
    v0 = version(account.id)
    with pytest.raises(InvalidInputError):
        menus.save_menu(account.id, {"button": [{"type": "click", "name": "no key"}]})
    assert menus.get_menu(account.id) is None and version(account.id) == v0


def test_publish_without_a_menu_or_when_wechat_refuses(
    app: Flask, simulator: str, create_account: Any
) -> None:
    account, fields, _ = create_account("plain")
    with pytest.raises(NotFoundError):
        menus.publish_menu(account.id)
    menus.save_menu(account.id, valid_tree())
    db.session.commit()
    requests.post(
        f"{simulator}/_sim/accounts/{fields['appid']}/faults",
        json={"kind": "errcode", "errcode": 65303},
        timeout=10,
    ).raise_for_status()
    with pytest.raises(WeChatAPIError) as exc:
        menus.publish_menu(account.id)
    assert exc.value.errcode == 65303
    menu = menus.get_menu(account.id)
    assert menu is not None and menu.published_tree is None and menu.published_at is None
    sim = sim_account(simulator, fields["appid"])
    assert sim["menu"] is None and sim["menu_creates"] == 0


# -- channel QR codes -------------------------------------------------------------------------------


def test_permanent_channel_qrcode(app: Flask, simulator: str, create_account: Any) -> None:
    account, fields, _ = create_account("plain")
    code = qrcodes.create_channel_qrcode(account.id, name="Store 1", scene="store-1", channel_type="store")
    db.session.commit()
    assert code.permanent and code.expires_at is None and code.expire_seconds is None
    assert code.ticket and code.url and code.url.startswith("http://weixin.qq.com/q/")
    recorded = sim_account(simulator, fields["appid"])["qrcodes"]
    assert recorded == [{"scene": "store-1", "ticket": code.ticket, "url": code.url}]
    assert [c.id for c in qrcodes.list_channel_qrcodes(account.id)] == [code.id]


def test_temporary_channel_qrcode(app: Flask, simulator: str, create_account: Any) -> None:
    account, fields, _ = create_account("plain")
    before = utcnow()
    code = qrcodes.create_channel_qrcode(
        account.id, name="Fair", scene="fair.2024", permanent=False, expire_seconds=3600
    )
    assert not code.permanent and code.expire_seconds == 3600
    assert code.expires_at is not None
    assert before + timedelta(seconds=3599) <= code.expires_at <= utcnow() + timedelta(seconds=3601)
    default = qrcodes.create_channel_qrcode(account.id, name="Month", scene="month", permanent=False)
    assert default.expire_seconds == 30 * 24 * 3600
    recorded = {q["scene"]: q for q in sim_account(simulator, fields["appid"])["qrcodes"]}
    assert recorded["fair.2024"]["expire_seconds"] == 3600 and recorded["fair.2024"]["ticket"] == code.ticket
    assert recorded["month"]["expire_seconds"] == 30 * 24 * 3600


def test_duplicate_scene_conflicts_only_within_the_account(
    app: Flask, simulator: str, create_account: Any
) -> None:
    a, fields_a, _ = create_account("plain")
    b, _, _ = create_account("plain")
    qrcodes.create_channel_qrcode(a.id, name="S", scene="s1")
    with pytest.raises(ConflictError):
        qrcodes.create_channel_qrcode(a.id, name="S again", scene="s1")
    assert len(sim_account(simulator, fields_a["appid"])["qrcodes"]) == 1
    other = qrcodes.create_channel_qrcode(b.id, name="S", scene="s1")
    assert other.account_id == b.id
    assert qrcodes.list_channel_qrcodes(a.id)[0].id != other.id


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"scene": ""}, "scene"),
        ({"scene": "has space"}, "scene"),
        ({"scene": "门店"}, "scene"),
        ({"scene": "s" * 65}, "scene"),
        ({"scene": "ok", "permanent": False, "expire_seconds": 30}, "expire_seconds"),
        ({"scene": "ok", "permanent": False, "expire_seconds": 31 * 24 * 3600}, "expire_seconds"),
    ],
)
def test_bad_qrcode_requests(
    app: Flask, simulator: str, create_account: Any, kwargs: dict[str, Any], field: str
) -> None:
    account, fields, _ = create_account("plain")
    with pytest.raises(InvalidInputError) as exc:
        qrcodes.create_channel_qrcode(account.id, name="X", **kwargs)
    assert field in exc.value.fields
    assert sim_account(simulator, fields["appid"])["qrcodes"] == []
    assert db.session.scalar(sa.select(sa.func.count()).select_from(ChannelQRCode)) == 0


def test_the_rule_list_marks_a_regex_rule_that_timed_out(create_staff: Any, create_account: Any) -> None:
    account, _, _ = create_account("plain")
    slow = _insert_rule(account.id, "slow", [r"(a+)+$"], "regex")
    _insert_rule(account.id, "sound", [r"^hi$"], "regex")
    services.bump_config(account.id)
    db.session.commit()
    manager = create_staff("account_manager", account_id=account.id)
    page = manager.get(f"/console/accounts/{account.id}/replies").get_data(as_text=True)
    assert "timed out: skipped" not in page
    assert match(account.id, "a" * 1500 + "!") is None
    page = manager.get(f"/console/accounts/{account.id}/replies").get_data(as_text=True)
    assert page.count("timed out: skipped") == 1 and replies.slow_rule_ids(account.id) == {slow}
    manager.form(f"/console/accounts/{account.id}/replies/{slow}/disable")
    assert replies.slow_rule_ids(account.id) == set()  # changing the rule clears the note


def test_a_catastrophic_regex_gives_up_instead_of_hanging(create_account: Any) -> None:
    account, _, _ = create_account("plain")
    with pytest.raises(InvalidInputError):  # refused when saved …
        replies.add_rule(
            account.id, name="evil", keywords=["^(a+)+$"], match_mode="regex", reply={"content": "x"}
        )
    # … and one saved before that check gives up when matched.
    db.session.add(
        ReplyRule(
            account_id=account.id,
            name="evil",
            keywords=["^(a+)+$"],
            match_mode="regex",
            reply_type="text",
            reply={"content": "x"},
        )
    )
    replies.add_rule(account.id, name="fallback", kind="default", reply={"content": "default"})
    db.session.commit()
    started = time.monotonic()
    rule = replies.match_text(
        account.id, services.account_by_appid(account.appid).config_version, "a" * 60 + "!"
    )
    # Backtracking would take longer than the universe has left; the timeout makes it a non-match.
    assert rule.name == "fallback" and time.monotonic() - started < 60
