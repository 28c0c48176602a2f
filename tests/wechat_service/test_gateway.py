"""The WeChat API gateway against the simulator: one shared token per account in Redis, one
refresh on token errors, bounded retries when busy, typed errors, token health."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
import requests
from flask import Flask

from accounts import services
from tests import helpers
from wechat_service.extensions import db
from wechat_service.gateway import (
    BadTemplateError,
    BusyError,
    ConfigurationError,
    RateLimitedError,
    RecipientUnavailableError,
    TokenError,
    TokenManager,
    UnreachableError,
    WeChatAPIError,
    token_manager,
)


def sim_account(simulator: str, appid: str) -> dict[str, Any]:
    resp = requests.get(f"{simulator}/_sim/accounts/{appid}", timeout=10)
    resp.raise_for_status()
    return resp.json()


def fault(simulator: str, appid: str, **spec: Any) -> None:
    requests.post(f"{simulator}/_sim/accounts/{appid}/faults", json=spec, timeout=10).raise_for_status()


def cached_token(redis_conn: redis.Redis, appid: str) -> str | None:
    value = redis_conn.hget(TokenManager.key(appid), "token")
    return value.decode() if value else None


def test_token_is_fetched_once_and_shared(
    app: Flask, simulator: str, create_account: Any, redis_conn: Any
) -> None:
    account, fields, _ = create_account("plain")
    requests.post(
        f"{simulator}/_sim/accounts/{fields['appid']}/followers",
        json={"count": 3, "prefix": "oG"},
        timeout=10,
    ).raise_for_status()
    client = services.api_client(account.id)
    followers = client.user.get_followers()
    assert followers["total"] == 3 and followers["data"]["openid"] == [
        "oG00000000",
        "oG00000001",
        "oG00000002",
    ]
    assert client.tag.get() == []
    assert services.api_client(account.id).tag.get() == []  # a second client (another process) shares it
    token_manager().get(fields["appid"], fields["app_secret"])
    stats = sim_account(simulator, fields["appid"])["stats"]
    assert stats["stable_token"] == 1 and stats["token"] == 0  # never the legacy cgi-bin/token
    assert stats["api_calls"] == 3
    token = cached_token(redis_conn, fields["appid"])
    assert token and token.startswith("SIMTOKEN_")
    assert 0 < redis_conn.ttl(TokenManager.key(fields["appid"])) <= 7200
    health = token_manager().health(fields["appid"])
    assert health["refreshes"] == 1 and health["failures"] == 0
    assert health["healthy"] is True and health["last_error"] is None


def test_an_invalidated_token_is_refreshed_once(
    app: Flask, simulator: str, create_account: Any, redis_conn: Any
) -> None:
    account, fields, _ = create_account("plain")
    client = services.api_client(account.id)
    client.tag.get()
    old = cached_token(redis_conn, fields["appid"])
    requests.post(
        f"{simulator}/_sim/accounts/{fields['appid']}/invalidate-token", timeout=10
    ).raise_for_status()
    assert client.tag.get() == []
    stats = sim_account(simulator, fields["appid"])["stats"]
    assert stats["stable_token"] == 2  # one refresh, not one per retry
    new = cached_token(redis_conn, fields["appid"])
    assert new and new != old
    client.user.get_followers()
    assert sim_account(simulator, fields["appid"])["stats"]["stable_token"] == 2
    assert token_manager().health(fields["appid"])["refreshes"] == 2


def test_a_token_that_stays_invalid_fails_after_one_refresh(
    app: Flask, simulator: str, create_account: Any
) -> None:
    account, fields, _ = create_account("plain")
    fault(simulator, fields["appid"], kind="errcode", errcode=40001, count=5)
    with pytest.raises(TokenError) as exc:
        services.api_client(account.id).tag.get()
    assert exc.value.errcode == 40001 and exc.value.appid == fields["appid"]
    sim = sim_account(simulator, fields["appid"])
    assert sim["stats"]["api_calls"] == 2  # the first try and one retry, no recursion
    assert sim["faults"][0]["remaining"] == 3


def test_invalidate_only_deletes_the_token_that_failed(app: Flask, create_account: Any) -> None:
    account, fields, _ = create_account("plain")
    tm = token_manager()
    token = tm.get(fields["appid"], fields["app_secret"])
    # Another process already replaced the token it saw failing: its invalidate must not touch ours.
    assert tm.invalidate(fields["appid"], "SIMTOKEN_an-older-one") is False
    assert tm.cached(fields["appid"]) == token
    assert tm.invalidate(fields["appid"], token) is True
    assert tm.cached(fields["appid"]) is None
    assert tm.invalidate(fields["appid"], token) is False


def test_one_busy_answer_is_retried(app: Flask, simulator: str, create_account: Any) -> None:
    account, fields, _ = create_account("plain")
    fault(simulator, fields["appid"], kind="busy", count=1)
    assert services.api_client(account.id).tag.get() == []
    sim = sim_account(simulator, fields["appid"])
    assert sim["stats"]["api_calls"] == 2 and sim["stats"]["stable_token"] == 1


def test_persistent_busy_raises_after_bounded_retries(
    app: Flask, simulator: str, create_account: Any
) -> None:
    account, fields, _ = create_account("plain")
    fault(simulator, fields["appid"], kind="busy", count=10)
    with pytest.raises(BusyError) as exc:
        services.api_client(account.id).tag.get()
    assert exc.value.errcode == -1
    retries = app.config["WECHAT_BUSY_RETRIES"]
    sim = sim_account(simulator, fields["appid"])
    assert sim["stats"]["api_calls"] == retries + 1
    assert sim["faults"][0]["remaining"] == 10 - (retries + 1)


@pytest.mark.parametrize(
    ("spec", "error", "errcode"),
    [
        ({"kind": "quota"}, RateLimitedError, 45009),
        ({"kind": "minute_quota"}, RateLimitedError, 45011),
        ({"kind": "errcode", "errcode": 43004}, RecipientUnavailableError, 43004),
        ({"kind": "errcode", "errcode": 40003}, RecipientUnavailableError, 40003),
        ({"kind": "errcode", "errcode": 47003}, BadTemplateError, 47003),
        ({"kind": "errcode", "errcode": 40037}, BadTemplateError, 40037),
        ({"kind": "errcode", "errcode": 40164}, ConfigurationError, 40164),
        ({"kind": "errcode", "errcode": 99999}, WeChatAPIError, 99999),
    ],
)
def test_errcodes_become_typed_errors_without_retry(
    app: Flask, simulator: str, create_account: Any, spec: dict[str, Any], error: type, errcode: int
) -> None:
    account, fields, _ = create_account("plain")
    fault(simulator, fields["appid"], **spec, count=3)
    with pytest.raises(WeChatAPIError) as exc:
        services.api_client(account.id).user.get_followers()
    assert type(exc.value) is error
    assert exc.value.errcode == errcode and exc.value.appid == fields["appid"]
    assert sim_account(simulator, fields["appid"])["stats"]["api_calls"] == 1  # never retried


def test_wrong_app_secret_is_a_configuration_error_with_health(
    app: Flask, simulator: str, create_account: Any, redis_conn: Any
) -> None:
    account, fields, _ = create_account("plain")
    services.update_account(fields["appid"], app_secret="0" * 32)
    db.session.commit()
    client = services.api_client(account.id)
    with pytest.raises(ConfigurationError) as exc:
        client.tag.get()
    assert exc.value.errcode == 40125
    with pytest.raises(ConfigurationError):
        client.user.get_followers()
    health = token_manager().health(fields["appid"])
    assert health["failures"] == 2 and health["refreshes"] == 0
    assert health["last_error"] is not None and health["last_error"].startswith("40125")
    assert health["last_error_at"] is not None and health["healthy"] is False
    assert cached_token(redis_conn, fields["appid"]) is None
    stats = sim_account(simulator, fields["appid"])["stats"]
    assert stats["api_calls"] == 0 and stats["stable_token"] == 0

    # Fixing the secret heals it.
    services.update_account(fields["appid"], app_secret=fields["app_secret"])
    db.session.commit()
    assert services.api_client(account.id).tag.get() == []
    health = token_manager().health(fields["appid"])
    assert health["refreshes"] == 1 and health["failures"] == 2 and health["healthy"] is True


def test_unknown_appid_at_token_time_is_a_configuration_error(app: Flask) -> None:
    fields = helpers.account_fields("plain")  # known to the service, never registered with WeChat
    account = services.add_account(**fields)
    with pytest.raises(ConfigurationError) as exc:
        services.api_client(account.id).tag.get()
    assert exc.value.errcode == 40013


def test_unreachable_token_endpoint(app: Flask, redis_conn: Any) -> None:
    tm = TokenManager(redis_conn, f"http://127.0.0.1:{helpers.free_port()}", 300, 2.0)
    with pytest.raises(UnreachableError):
        tm.get("wx00000000000000bb", "secret")
    health = tm.health("wx00000000000000bb")
    assert health["failures"] == 1 and health["last_error"] == "unreachable: ConnectionError"
    assert health["healthy"] is False


def test_menu_create_and_get_through_the_gateway(app: Flask, simulator: str, create_account: Any) -> None:
    account, fields, _ = create_account("plain")
    client = services.api_client(account.id)
    menu = {"button": [{"type": "click", "name": "你好", "key": "HI"}]}
    assert client.menu.create(menu)["errcode"] == 0
    assert client.menu.get() == {"menu": menu}
    assert sim_account(simulator, fields["appid"])["menu_creates"] == 1


def test_menu_get_without_a_menu_returns_none(app: Flask, create_account: Any) -> None:
    """wechatpy's ``menu.get()`` turns 46003 (no menu) into None by catching WeChatClientException;
    the gateway's typed errors must not break the wrapped library's own handling."""
    account, _, _ = create_account("plain")
    assert services.api_client(account.id).menu.get() is None


def test_unreachable_wechat_errors_carry_no_access_token(app: Flask, create_account: Any) -> None:
    from wechat_service.gateway import GatewayClient, UnreachableError, token_manager

    account, fields, _ = create_account("plain")
    app.extensions["redis"].hset(
        f"wx:token:{fields['appid']}", mapping={"token": "SECRET_TOKEN_abc", "expires_at": time.time() + 7200}
    )
    client = GatewayClient(
        fields["appid"],
        fields["app_secret"],
        api_base="http://127.0.0.1:9",
        tokens=token_manager(),
        timeout=1,
        busy_retries=0,
    )
    with pytest.raises(UnreachableError) as exc:
        client.menu.get()
    assert "SECRET_TOKEN_abc" not in str(exc.value) and "access_token" not in str(exc.value)
