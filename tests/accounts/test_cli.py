"""`wechat-service account …` and `orgunit …` through Flask's CLI runner: JSON output for scripts,
secrets never printed, clear errors and exit codes."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import Result
from flask import Flask

from accounts import services
from accounts.models import Account, AccountStatus
from tests import helpers
from wechat_service.extensions import db
from wechat_service.wxcrypto import generate_aes_key


@pytest.fixture
def cli(app: Flask) -> Any:
    runner = app.test_cli_runner()

    def invoke(*args: str) -> Result:
        return runner.invoke(args=list(args))

    return invoke


def add_args(fields: dict[str, Any], *extra: str) -> list[str]:
    args = [
        "account",
        "add",
        "--name",
        fields["name"],
        "--appid",
        fields["appid"],
        "--secret",
        fields["app_secret"],
        "--original-id",
        fields["original_id"],
        "--token",
        fields["token"],
        "--mode",
        fields["message_mode"],
    ]
    if fields.get("aes_key"):
        args += ["--aes-key", fields["aes_key"]]
    return args + list(extra)


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


def test_add_prints_the_callback_url_and_masks_secrets(cli: Any) -> None:
    fields = helpers.account_fields("safe")
    result = cli(*add_args(fields, "--json"))
    data = ok_json(result)
    assert data["appid"] == fields["appid"] and data["message_mode"] == "safe"
    assert data["callback_url"] == f"http://service.test/wechat/{fields['appid']}/callback"
    assert data["status"] == "active" and data["kind"] == "service"
    for secret in (fields["app_secret"], fields["token"], fields["aes_key"]):
        assert secret not in result.output
    assert data["app_secret"].endswith(fields["app_secret"][-4:]) and data["app_secret"].startswith("****")
    account = services.account_by_appid(fields["appid"])
    assert (account.app_secret, account.token, account.aes_key) == (
        fields["app_secret"],
        fields["token"],
        fields["aes_key"],
    )


def test_add_without_json_prints_the_callback_url_line(cli: Any) -> None:
    fields = helpers.account_fields("plain")
    result = cli(*add_args(fields))
    assert result.exit_code == 0, result.output
    assert (
        f"callback URL (paste into the WeChat admin): http://service.test/wechat/{fields['appid']}/callback"
        in (result.stdout)
    )
    assert fields["app_secret"] not in result.output and fields["token"] not in result.output


def test_add_can_generate_the_aes_key_and_join_an_org_unit(cli: Any) -> None:
    ok_json(cli("orgunit", "add", "--code", "gd", "--name", "Guangdong", "--kind", "province", "--json"))
    fields = helpers.account_fields("safe", aes_key=None)
    result = cli(*add_args(fields, "--generate-aes-key", "--org-unit", "gd", "--json"))
    data = ok_json(result)
    account = services.account_by_appid(fields["appid"])
    assert account.aes_key and len(account.aes_key) == 43
    assert account.aes_key not in result.output
    assert data["org_unit"] == "gd" and data["org_path"] == ["gd"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"appid": "wx12"}, "appid"),
        ({"token": "bad!token"}, "token"),
        ({"aes_key": "short"}, "aes_key"),
    ],
)
def test_add_with_bad_input_exits_1_and_names_the_field(
    cli: Any, overrides: dict[str, Any], field: str
) -> None:
    fields = helpers.account_fields("plain", **overrides)
    result = cli(*add_args(fields))
    assert result.exit_code == 1
    assert "error: invalid account fields" in result.stderr
    assert f"  {field}: " in result.stderr
    assert result.stdout == ""
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Account)) == 0


def test_add_safe_mode_without_key_and_duplicate_appid(cli: Any) -> None:
    fields = helpers.account_fields("safe", aes_key=None)
    result = cli(*add_args(fields))
    assert (
        result.exit_code == 1 and "EncodingAESKey" in result.stderr and "aes_key: required" in result.stderr
    )
    fields = helpers.account_fields("plain")
    ok_json(cli(*add_args(fields, "--json")))
    again = cli(*add_args({**fields, "name": "Copy"}))
    assert again.exit_code == 1
    assert f"error: an account with appid {fields['appid']} exists" in again.stderr
    assert services.account_by_appid(fields["appid"]).name == fields["name"]


def test_add_with_unknown_org_unit_exits_2(cli: Any) -> None:
    fields = helpers.account_fields("plain")
    result = cli(*add_args(fields, "--org-unit", "nowhere"))
    assert result.exit_code == 2 and "org unit 'nowhere' not found" in result.stderr
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Account)) == 0


def test_list_and_show(cli: Any) -> None:
    ok_json(cli("orgunit", "add", "--code", "grp", "--name", "Group", "--kind", "group", "--json"))
    ok_json(
        cli(
            "orgunit",
            "add",
            "--code",
            "gd",
            "--name",
            "GD",
            "--kind",
            "province",
            "--parent",
            "grp",
            "--json",
        )
    )
    a = helpers.account_fields("plain")
    b = helpers.account_fields("safe")
    ok_json(cli(*add_args(a, "--org-unit", "gd", "--json")))
    ok_json(cli(*add_args(b, "--json")))

    result = cli("account", "list", "--json")
    listed = ok_json(result)
    assert [x["appid"] for x in listed] == [a["appid"], b["appid"]]
    assert listed[0]["org_path"] == ["grp", "gd"] and listed[1]["org_path"] == []
    for secret in (a["app_secret"], b["app_secret"], b["aes_key"], a["token"]):
        assert secret not in result.output
    assert [x["appid"] for x in ok_json(cli("account", "list", "--org-unit", "grp", "--json"))] == [
        a["appid"]
    ]
    text = cli("account", "list")
    assert text.exit_code == 0 and a["appid"] in text.stdout and "grp/gd" in text.stdout

    shown = cli("account", "show", b["appid"], "--json")
    data = ok_json(shown)
    assert data["appid"] == b["appid"] and data["name"] == b["name"]
    assert data["token_health"]["refreshes"] == 0 and data["token_health"]["healthy"] is False
    assert b["app_secret"] not in shown.output and b["aes_key"] not in shown.output


def test_unknown_appid_exits_2_for_every_command(cli: Any) -> None:
    missing = "wx00000000000000aa"
    for args in (
        ("account", "show", missing),
        ("account", "update", missing, "--name", "x"),
        ("account", "disable", missing),
        ("account", "enable", missing),
        ("account", "rotate-aes-key", missing),
        ("account", "list", "--org-unit", "nope"),
    ):
        result = cli(*args)
        assert result.exit_code == 2, args
        assert result.stderr.startswith("error: "), args
    assert f"no account with appid {missing}" in cli("account", "show", missing).stderr


def test_update(cli: Any) -> None:
    fields = helpers.account_fields("plain")
    ok_json(cli(*add_args(fields, "--json")))
    key = generate_aes_key()
    result = cli(
        "account", "update", fields["appid"], "--name", "Renamed", "--mode", "safe", "--aes-key", key
    )
    assert result.exit_code == 0 and f"updated {fields['appid']}" in result.stdout
    db.session.expire_all()
    account = services.account_by_appid(fields["appid"])
    assert (account.name, account.message_mode.value, account.aes_key) == ("Renamed", "safe", key)
    assert account.previous_aes_key == fields["aes_key"]
    assert account.token == fields["token"]  # untouched options stay as they were

    bad = cli("account", "update", fields["appid"], "--token", "no!")
    assert bad.exit_code == 1 and "token:" in bad.stderr
    db.session.expire_all()
    assert services.account_by_appid(fields["appid"]).token == fields["token"]


def test_disable_and_enable(cli: Any) -> None:
    fields = helpers.account_fields("plain")
    ok_json(cli(*add_args(fields, "--json")))
    data = ok_json(cli("account", "disable", fields["appid"], "--json"))
    assert data["status"] == "disabled"
    db.session.expire_all()
    assert services.account_by_appid(fields["appid"]).status is AccountStatus.disabled
    result = cli("account", "enable", fields["appid"])
    assert result.exit_code == 0 and result.stdout.strip() == f"enabled {fields['appid']}"
    db.session.expire_all()
    assert services.account_by_appid(fields["appid"]).status is AccountStatus.active


def test_rotate_aes_key(cli: Any) -> None:
    fields = helpers.account_fields("safe")
    ok_json(cli(*add_args(fields, "--json")))
    result = cli("account", "rotate-aes-key", fields["appid"], "--json")
    data = ok_json(result)
    db.session.expire_all()
    account = services.account_by_appid(fields["appid"])
    assert account.previous_aes_key == fields["aes_key"] and account.aes_key != fields["aes_key"]
    assert account.aes_key not in result.output and "new_aes_key" not in data
    assert data["aes_key"].endswith(account.aes_key[-4:])
    assert data["previous_aes_key"].endswith(fields["aes_key"][-4:])

    chosen = generate_aes_key()
    shown = ok_json(
        cli("account", "rotate-aes-key", fields["appid"], "--new-key", chosen, "--show-key", "--json")
    )
    assert shown["new_aes_key"] == chosen
    same = cli("account", "rotate-aes-key", fields["appid"], "--new-key", chosen)
    assert same.exit_code == 1 and "already the current" in same.stderr
    bad = cli("account", "rotate-aes-key", fields["appid"], "--new-key", "short")
    assert bad.exit_code == 1 and "aes_key:" in bad.stderr


def test_orgunit_add_and_list(cli: Any) -> None:
    grp = ok_json(cli("orgunit", "add", "--code", "grp", "--name", "Group", "--kind", "group", "--json"))
    assert grp["code"] == "grp" and grp["path"] == ["grp"] and grp["kind"] == "group"
    city = cli("orgunit", "add", "--code", "sz", "--name", "Shenzhen", "--kind", "city", "--parent", "grp")
    assert city.exit_code == 0 and city.stdout.strip() == "added grp/sz"
    listed = ok_json(cli("orgunit", "list", "--json"))
    assert [(u["code"], u["parent"], u["path"]) for u in listed] == [
        ("grp", None, ["grp"]),
        ("sz", "grp", ["grp", "sz"]),
    ]

    dup = cli("orgunit", "add", "--code", "grp", "--name", "Again", "--kind", "group")
    assert dup.exit_code == 1 and "org unit 'grp' exists" in dup.stderr
    orphan = cli("orgunit", "add", "--code", "x", "--name", "X", "--kind", "city", "--parent", "nope")
    assert orphan.exit_code == 2 and "parent org unit 'nope' not found" in orphan.stderr
    bad = cli("orgunit", "add", "--code", "Bad Code", "--name", "X", "--kind", "city")
    assert bad.exit_code == 1 and "code: invalid" in bad.stderr
    wrong_kind = cli("orgunit", "add", "--code", "y", "--name", "Y", "--kind", "planet")
    assert wrong_kind.exit_code == 2 and "planet" in wrong_kind.stderr  # click rejects the choice
    assert [u["code"] for u in ok_json(cli("orgunit", "list", "--json"))] == ["grp", "sz"]


def test_show_reports_token_health_after_api_calls(cli: Any, create_account: Any) -> None:
    account, fields, _ = create_account("plain")
    services.api_client(account.id).tag.get()
    health = ok_json(cli("account", "show", fields["appid"], "--json"))["token_health"]
    assert health["refreshes"] == 1 and health["failures"] == 0 and health["healthy"] is True
    text = cli("account", "show", fields["appid"])
    assert text.exit_code == 0 and f"appid: {fields['appid']}" in text.stdout
    assert fields["app_secret"] not in text.output
