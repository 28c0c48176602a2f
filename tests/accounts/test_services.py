"""accounts.services: validation, secrets at rest, masking, key rotation, status, the org tree and
tenant scoping."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from accounts import replies, services
from accounts.models import Account, AccountStatus, MessageMode, OrgUnit, ReplyRule
from tests import helpers
from wechat_service.errors import ConflictError, InvalidInputError, NotFoundError
from wechat_service.extensions import db
from wechat_service.wxcrypto import generate_aes_key


def add(**overrides: Any) -> tuple[Account, dict[str, Any]]:
    fields = helpers.account_fields(overrides.pop("mode", "plain"), **overrides)
    return services.add_account(**fields), fields


def account_count() -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(Account)) or 0


def raw_secrets(appid: str) -> sa.Row[Any]:
    return db.session.execute(
        sa.text("SELECT app_secret, token, aes_key, previous_aes_key FROM accounts WHERE appid = :appid"),
        {"appid": appid},
    ).one()


# -- add_account validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"appid": "wx123"}, "appid"),
        ({"appid": "WX0123456789ABCDEF"}, "appid"),
        ({"appid": "gh_0123456789abcdef"}, "appid"),
        ({"token": "a!"}, "token"),
        ({"token": "t" * 33}, "token"),
        ({"aes_key": "tooshort"}, "aes_key"),
        ({"aes_key": "!" * 43}, "aes_key"),
        ({"original_id": "not-a-gh-id"}, "original_id"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"name": "   "}, "name"),
        ({"app_secret": ""}, "app_secret"),
        ({"kind": "enterprise"}, "kind"),
        ({"message_mode": "secret"}, "message_mode"),
    ],
)
def test_add_account_rejects_bad_fields(app: Flask, overrides: dict[str, Any], field: str) -> None:
    fields = helpers.account_fields("plain", **overrides)
    with pytest.raises(InvalidInputError) as exc:
        services.add_account(**fields)
    assert field in exc.value.fields
    assert exc.value.status == 400
    assert account_count() == 0


def test_add_account_reports_every_bad_field_at_once(app: Flask) -> None:
    fields = helpers.account_fields("plain", appid="nope", token="x", aes_key="short")
    with pytest.raises(InvalidInputError) as exc:
        services.add_account(**fields)
    assert {"appid", "token", "aes_key"} <= set(exc.value.fields)


@pytest.mark.parametrize("mode", ["safe", "compatible"])
def test_encrypted_modes_need_an_aes_key(app: Flask, mode: str) -> None:
    fields = helpers.account_fields(mode, aes_key=None)
    with pytest.raises(InvalidInputError) as exc:
        services.add_account(**fields)
    assert exc.value.fields == {"aes_key": ["required"]}
    assert account_count() == 0


def test_official_account_needs_a_token_but_a_mini_program_does_not(app: Flask) -> None:
    with pytest.raises(InvalidInputError) as exc:
        services.add_account(**helpers.account_fields("plain", token=None))
    assert exc.value.fields == {"token": ["required"]}
    account = services.add_account(**helpers.account_fields("plain", token=None, kind="mini_program"))
    assert account.id is not None and account.token is None


def test_duplicate_appid_is_a_conflict(app: Flask) -> None:
    account, fields = add()
    with pytest.raises(ConflictError) as exc:
        services.add_account(**{**fields, "name": "Another"})
    assert exc.value.status == 409 and fields["appid"] in exc.value.message
    assert account_count() == 1
    assert services.account_by_appid(fields["appid"]).name == account.name


def test_unknown_org_unit_on_add_is_404(app: Flask) -> None:
    with pytest.raises(NotFoundError):
        services.add_account(**helpers.account_fields("plain"), org_unit_code="nowhere")
    assert account_count() == 0


# -- secrets at rest -------------------------------------------------------------------------------


def test_secrets_are_encrypted_at_rest_and_readable_through_the_orm(app: Flask) -> None:
    account, fields = add(mode="safe")
    db.session.commit()
    raw = raw_secrets(fields["appid"])
    for column, plain in (
        ("app_secret", fields["app_secret"]),
        ("token", fields["token"]),
        ("aes_key", fields["aes_key"]),
    ):
        stored = getattr(raw, column)
        assert stored and plain not in stored, column
        assert stored.startswith("gAAAAA"), column  # a Fernet token
    db.session.expire_all()
    again = db.session.scalar(sa.select(Account).where(Account.appid == fields["appid"]))
    assert (again.app_secret, again.token, again.aes_key) == (
        fields["app_secret"],
        fields["token"],
        fields["aes_key"],
    )


def test_the_same_secret_is_sealed_differently_each_time(app: Flask) -> None:
    secret = "s" * 32
    _, a = add(app_secret=secret)
    _, b = add(app_secret=secret)
    assert raw_secrets(a["appid"]).app_secret != raw_secrets(b["appid"]).app_secret


def test_describe_account_masks_every_secret(app: Flask) -> None:
    account, fields = add(mode="safe")
    services.rotate_aes_key(fields["appid"])
    data = services.describe_account(account)
    text = json.dumps(data)
    for secret in (fields["app_secret"], fields["token"], fields["aes_key"], account.aes_key):
        assert secret not in text
    assert data["app_secret"] == "*" * (len(fields["app_secret"]) - 4) + fields["app_secret"][-4:]
    assert data["aes_key"].endswith(account.aes_key[-4:]) and set(data["aes_key"][:-4]) == {"*"}
    assert data["previous_aes_key"].endswith(fields["aes_key"][-4:])
    assert data["callback_url"] == f"http://service.test/wechat/{fields['appid']}/callback"
    assert data["message_mode"] == "safe" and data["status"] == "active"
    assert services.describe_account(account, {"healthy": True})["token_health"] == {"healthy": True}


# -- updates, rotation, status -----------------------------------------------------------------------


def test_update_account_changing_the_aes_key_keeps_the_previous_one(app: Flask) -> None:
    account, fields = add(mode="safe")
    version = account.config_version
    new_key = generate_aes_key()
    services.update_account(fields["appid"], aes_key=new_key, name="Renamed")
    assert account.aes_key == new_key and account.previous_aes_key == fields["aes_key"]
    assert account.aes_key_rotated_at is not None and account.name == "Renamed"
    assert account.config_version == version + 1
    raw = raw_secrets(fields["appid"])
    assert new_key not in raw.aes_key and fields["aes_key"] not in raw.previous_aes_key


def test_update_account_with_the_same_aes_key_does_not_rotate(app: Flask) -> None:
    account, fields = add(mode="safe")
    services.update_account(fields["appid"], aes_key=fields["aes_key"])
    assert account.previous_aes_key is None and account.aes_key_rotated_at is None


def test_update_account_rejects_unknown_and_invalid_changes(app: Flask) -> None:
    account, fields = add()
    with pytest.raises(InvalidInputError) as unknown:
        services.update_account(fields["appid"], status="disabled", config_version=99)
    assert "config_version" in unknown.value.message and "status" in unknown.value.message
    with pytest.raises(InvalidInputError) as exc:
        services.update_account(fields["appid"], token="no way!")
    assert "token" in exc.value.fields
    with pytest.raises(NotFoundError):
        services.update_account("wx0000000000000001", name="x")
    db.session.expire_all()
    assert services.account_by_appid(fields["appid"]).token == fields["token"]


@pytest.mark.parametrize(
    ("create", "changes", "field"),
    [
        ({"mode": "safe"}, {"aes_key": ""}, "aes_key"),
        ({"mode": "plain"}, {"token": ""}, "token"),
        ({"mode": "plain", "kind": "mini_program", "token": None}, {"kind": "service"}, "token"),
    ],
    ids=[
        "blank-aes-key-in-safe-mode",
        "blank-token-of-an-official-account",
        "tokenless-mini-program-to-service",
    ],
)
def test_update_account_keeps_the_rules_that_add_account_enforces(
    app: Flask, create: dict[str, Any], changes: dict[str, Any], field: str
) -> None:
    """What add_account refuses (an official account without a callback token, an encrypted mode
    without an EncodingAESKey), update_account must refuse too: such an account answers every
    callback with 403 or cannot decrypt it."""
    account, fields = add(**create)
    before = (account.kind, account.token, account.aes_key, account.previous_aes_key)
    with pytest.raises(InvalidInputError) as exc:
        services.update_account(fields["appid"], **changes)
    assert field in exc.value.fields
    assert (account.kind, account.token, account.aes_key, account.previous_aes_key) == before


def test_switching_to_safe_mode_needs_an_aes_key(app: Flask) -> None:
    account, fields = add(aes_key=None)
    with pytest.raises(InvalidInputError) as exc:
        services.update_account(fields["appid"], message_mode="safe")
    assert exc.value.fields == {"aes_key": ["required"]}
    key = generate_aes_key()
    services.update_account(fields["appid"], message_mode="safe", aes_key=key)
    assert account.message_mode is MessageMode.safe and account.aes_key == key


def test_update_account_moves_between_org_units(app: Flask) -> None:
    services.add_org_unit("gd", "Guangdong", "province")
    account, fields = add()
    services.update_account(fields["appid"], org_unit_code="gd")
    assert account.org_unit is not None and account.org_unit.code == "gd"
    services.update_account(fields["appid"], org_unit_code="")
    assert account.org_unit is None


def test_rotate_aes_key(app: Flask) -> None:
    account, fields = add(mode="safe")
    version = account.config_version
    services.rotate_aes_key(fields["appid"])
    first = account.aes_key
    assert first != fields["aes_key"] and len(first) == 43
    assert account.previous_aes_key == fields["aes_key"]
    assert account.config_version == version + 1
    chosen = generate_aes_key()
    services.rotate_aes_key(fields["appid"], chosen)
    assert (account.aes_key, account.previous_aes_key) == (chosen, first)  # the oldest key is gone
    with pytest.raises(ConflictError):
        services.rotate_aes_key(fields["appid"], chosen)
    with pytest.raises(InvalidInputError) as exc:
        services.rotate_aes_key(fields["appid"], "bad-key")
    assert "aes_key" in exc.value.fields
    assert account.aes_key == chosen


def test_set_account_status_and_config_version(app: Flask) -> None:
    account, fields = add()
    version = account.config_version
    services.set_account_status(fields["appid"], AccountStatus.disabled)
    assert account.status is AccountStatus.disabled and account.config_version == version + 1
    assert [a for a, _ in services.active_token_accounts()].count(fields["appid"]) == 0
    services.set_account_status(fields["appid"], AccountStatus.active)
    assert account.status is AccountStatus.active and account.config_version == version + 2
    assert (fields["appid"], fields["app_secret"]) in services.active_token_accounts()
    services.bump_config(account.id)  # by id (as rule changes do): re-read the row
    db.session.refresh(account)
    assert account.config_version == version + 3


def test_callback_view_follows_config_changes(app: Flask) -> None:
    account, fields = add(mode="safe")
    info = services.callback_account(fields["appid"])
    assert info is not None and info.aes_keys == (fields["aes_key"],) and info.token == fields["token"]
    services.rotate_aes_key(fields["appid"])
    info2 = services.callback_account(fields["appid"])
    assert info2 is not None and info2.aes_keys == (account.aes_key, fields["aes_key"])
    assert info2.config_version == info.config_version + 1
    assert services.callback_account("wx0000000000000002") is None


# -- org units -------------------------------------------------------------------------------------


def test_org_tree_and_subtree_listing(app: Flask) -> None:
    services.add_org_unit("grp", "Group", "group")
    prov = services.add_org_unit("gd", "Guangdong", "province", parent_code="grp")
    city = services.add_org_unit("gd.sz", "Shenzhen", "city", parent_code="gd")
    services.add_org_unit("bj", "Beijing", "province", parent_code="grp")
    services.add_org_unit("other", "Elsewhere", "other")
    assert city.parent is prov and prov.parent is not None and prov.parent.code == "grp"
    assert services.org_path(city) == ["grp", "gd", "gd.sz"]

    top, _ = add(org_unit_code="grp")
    in_prov, _ = add(org_unit_code="gd")
    in_city, _ = add(org_unit_code="gd.sz")
    in_bj, _ = add(org_unit_code="bj")
    outside, _ = add(org_unit_code="other")
    loose, _ = add()

    def ids(code: str | None) -> list[int]:
        return [a.id for a in services.list_accounts(code)]

    assert ids("grp") == [top.id, in_prov.id, in_city.id, in_bj.id]
    assert ids("gd") == [in_prov.id, in_city.id]
    assert ids("gd.sz") == [in_city.id]
    assert ids("other") == [outside.id]
    assert ids(None) == [top.id, in_prov.id, in_city.id, in_bj.id, outside.id, loose.id]
    assert [u.code for u in services.list_org_units()] == ["bj", "gd", "gd.sz", "grp", "other"]
    assert services.describe_account(in_city)["org_path"] == ["grp", "gd", "gd.sz"]
    with pytest.raises(NotFoundError):
        services.list_accounts("missing")


def test_org_unit_errors(app: Flask) -> None:
    services.add_org_unit("grp", "Group", "group")
    with pytest.raises(ConflictError):
        services.add_org_unit("grp", "Again", "group")
    with pytest.raises(NotFoundError) as exc:
        services.add_org_unit("gd", "Guangdong", "province", parent_code="nope")
    assert exc.value.status == 404
    with pytest.raises(InvalidInputError) as bad_kind:
        services.add_org_unit("x1", "X", "planet")
    assert "kind" in bad_kind.value.fields
    for code in ("", "Upper", "has space", "-lead"):
        with pytest.raises(InvalidInputError) as bad_code:
            services.add_org_unit(code, "X", "city")
        assert "code" in bad_code.value.fields
    assert [u.code for u in db.session.scalars(sa.select(OrgUnit))] == ["grp"]


# -- tenant scoping -----------------------------------------------------------------------------------


def test_scoped_queries_never_return_another_accounts_rows(app: Flask) -> None:
    a, _ = add()
    b, _ = add()
    rule = replies.add_rule(a.id, name="mine", keywords=["hi"], reply={"content": "hello"})
    assert services.get_scoped(ReplyRule, a.id, rule.id) is rule
    with pytest.raises(NotFoundError):
        services.get_scoped(ReplyRule, b.id, rule.id)
    assert list(db.session.scalars(services.scoped(ReplyRule, b.id))) == []
    assert list(db.session.scalars(services.scoped(ReplyRule, a.id))) == [rule]
    with pytest.raises(NotFoundError):
        replies.set_rule_enabled(b.id, rule.id, False)
    with pytest.raises(NotFoundError):
        replies.delete_rule(b.id, rule.id)
    db.session.refresh(rule)
    assert rule.enabled
    assert replies.list_rules(b.id) == [] and replies.rule_count(b.id) == 0
