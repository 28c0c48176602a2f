"""The provider interface: one registry, credentials checked by their provider when saved and
sealed whole, no branching on the provider outside the registry, and existing merchants migrated."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask_migrate import downgrade, upgrade

from payments import merchants
from payments.models import Merchant, Provider
from payments.providers import REGISTRY
from tests import helpers
from wechat_service.app import create_app
from wechat_service.errors import InvalidInputError
from wechat_service.extensions import db
from wechat_service.secrets import open_secret, seal_secret

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("wechat_service", "accounts", "payments", "store", "templates_msg", "metrics")


def _pems(bits: int = 2048) -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def test_every_provider_is_in_the_registry() -> None:
    assert set(REGISTRY) == set(Provider)
    for kind in REGISTRY.values():
        assert kind.checkout in ("jsapi", "redirect") and kind.statement in ("wechat", "alipay")
        assert "{id}" in kind.notify_path and kind.secret_fields


def test_nothing_outside_the_registry_asks_which_provider_it_is() -> None:
    """No comparison with a Provider member (``provider is Provider.alipay``…) in the product code
    outside payments/providers: what differs between providers is behind the interface."""
    found = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.is_relative_to(ROOT / "payments" / "providers"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Compare):
                    sides = [node.left, *node.comparators]
                    if any(
                        isinstance(s, ast.Attribute)
                        and isinstance(s.value, ast.Name)
                        and s.value.id == "Provider"
                        or isinstance(s, ast.Attribute)
                        and isinstance(s.value, ast.Attribute)
                        and s.value.attr == "Provider"
                        for s in sides
                    ):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_a_v3_merchant_is_checked_field_by_field(app: Flask, create_account: Any) -> None:
    account, _, _ = create_account("plain")
    private, public = _pems()
    weak, _ = _pems(1024)
    with pytest.raises(InvalidInputError) as exc:
        merchants.add_merchant(
            account.id, mchid="1900000001", serial_no="not-hex!", private_key=weak, apiv3_key="short",
            platform_public_key="-----BEGIN PUBLIC KEY-----\nbroken\n-----END PUBLIC KEY-----",
            platform_public_key_id="",
        )  # fmt: skip
    assert exc.value.fields == {
        "serial_no": ["the certificate serial number is hexadecimal"],
        "private_key": ["the key has fewer than 2048 bits"],
        "apiv3_key": ["the APIv3 key has 32 characters"],
        "platform_public_key": ["not an RSA public key (PEM or base64)"],
        "platform_public_key_id": ["the public key's id (PUB_KEY_ID_…) is required"],
    }
    bare = "".join(line for line in private.splitlines() if not line.startswith("-----"))
    merchant = merchants.add_merchant(
        account.id, mchid="1900000001", serial_no="5157f09efdc096de15ebe81a47057a72", private_key=bare,
        apiv3_key="k" * 32, platform_public_key=public, platform_public_key_id="PUB_KEY_ID_0001",
    )  # fmt: skip
    db.session.commit()
    # Stored as the PEM wechatpayv3 reads (PKCS#8), the serial upper-case, the whole config sealed.
    assert merchant.config["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert merchant.config["serial_no"] == "5157F09EFDC096DE15EBE81A47057A72"
    raw = db.session.execute(
        sa.text("SELECT config FROM merchants WHERE id = :id"), {"id": merchant.id}
    ).scalar()
    assert "PRIVATE KEY" not in raw and "k" * 32 not in raw
    assert json.loads(open_secret(raw))["apiv3_key"] == "k" * 32
    shown = merchants.masked_config(merchant)
    assert shown["apiv3_key"] == "••••kkkk" and "PRIVATE" not in shown["private_key"]
    assert shown["platform_public_key_id"] == "PUB_KEY_ID_0001"


def test_v2_and_alipay_credentials_are_checked_too(app: Flask, create_account: Any) -> None:
    account, _, _ = create_account("plain")
    with pytest.raises(InvalidInputError) as exc:
        merchants.add_wechatpay_v2_merchant(
            account.id, mchid="1900000002", api_key="x" * 31, sign_type="SHA1", cert_pem="nope"
        )
    assert set(exc.value.fields) == {"api_key", "sign_type", "cert_pem"}
    with pytest.raises(InvalidInputError) as exc:
        merchants.add_alipay_merchant(
            account.id, app_id="2021000000000001", seller_id="2088000000000001",
            app_private_key="not a key", alipay_public_key="",
        )  # fmt: skip
    assert set(exc.value.fields) == {"app_private_key", "alipay_public_key"}
    with pytest.raises(InvalidInputError) as exc:
        merchants.save(account.id, "alipay", mchid="", appid="x" * 40, config={"typo_key": "1"})
    assert set(exc.value.fields) == {"mchid", "appid"}
    private, public = _pems()
    with pytest.raises(InvalidInputError) as exc:
        merchants.save(
            account.id, "alipay", mchid="2088", appid="2021",
            config={"app_private_key": private, "alipay_public_key": public, "typo_key": "1"},
        )  # fmt: skip
    assert exc.value.fields == {"typo_key": ["unknown field"]}


# -- the data migration, on a populated database ---------------------------------------------------

BEFORE = "c4a8e2f19d07"  # payment intents; merchants still in v3-named columns


def _old_rows(private: str, public: str) -> list[dict[str, Any]]:
    """Merchants as the three providers stored them before (secrets sealed column by column)."""
    return [
        {"id": 1, "provider": "wechatpay_v3", "mchid": "1900000001", "appid": "wxv3", "serial_no": "ABC123",
         "private_key": seal_secret(private), "apiv3_key": seal_secret("k" * 32),
         "platform_public_key": public, "platform_public_key_id": "PUB_KEY_ID_1", "sign_type": None},
        {"id": 2, "provider": "wechatpay_v2", "mchid": "1900000002", "appid": "wxv2", "serial_no": "",
         "private_key": seal_secret(""), "apiv3_key": seal_secret("a" * 32), "platform_public_key": "",
         "platform_public_key_id": "", "sign_type": "HMAC-SHA256"},
        {"id": 3, "provider": "alipay", "mchid": "2088000000000001", "appid": "2021000000000001",
         "serial_no": "", "private_key": seal_secret(private), "apiv3_key": seal_secret(""),
         "platform_public_key": public, "platform_public_key_id": "alipay", "sign_type": None},
    ]  # fmt: skip


@pytest.mark.parametrize("database", ["merchants_pg", "sqlite"])
def test_the_migration_gives_each_provider_its_own_sealed_config(tmp_path: Path, database: str) -> None:
    url = helpers.recreate_database(f"{helpers.DB_NAME}_{database}") if database != "sqlite" else None
    overrides = {
        "SECRET_KEY": helpers.SECRET_KEY,
        "MASTER_KEY": helpers.MASTER_KEY,
        "INSTANCE_PATH": str(tmp_path),
    }
    app = create_app({**overrides, **({"DATABASE_URL": url} if url else {})})
    private, public = _pems()
    with app.app_context():
        upgrade(revision=BEFORE)
        with db.engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO accounts (id, name, kind, appid, app_secret, message_mode, status, timezone,"
                " config_version, created_at, updated_at) VALUES (1, 'A', 'service', 'wxmig', 's', 'plain',"
                " 'active', 'Asia/Shanghai', 1, '2026-12-01 10:00:00', '2026-12-01 10:00:00')"
            ))  # fmt: skip
            conn.execute(
                sa.text(
                    "INSERT INTO merchants (id, account_id, provider, mchid, appid, serial_no, private_key,"
                    " apiv3_key, platform_public_key, platform_public_key_id, sign_type, created_at) VALUES"
                    " (:id, 1, :provider, :mchid, :appid, :serial_no, :private_key, :apiv3_key,"
                    " :platform_public_key, :platform_public_key_id, :sign_type, '2026-12-01 10:00:00')"
                ),
                _old_rows(private, public),
            )
        upgrade()
        configs = dict(db.session.execute(sa.select(Merchant.id, Merchant.config)).all())
        assert configs == {
            1: {"serial_no": "ABC123", "private_key": private, "apiv3_key": "k" * 32,
                "platform_public_key": public, "platform_public_key_id": "PUB_KEY_ID_1"},
            2: {"api_key": "a" * 32, "sign_type": "HMAC-SHA256", "cert_pem": "", "key_pem": ""},
            3: {"app_private_key": private, "alipay_public_key": public},
        }  # fmt: skip
        # What was saved before is still usable: each provider's client builds from it.
        for merchant in db.session.scalars(sa.select(Merchant)):
            assert merchants.client_for(merchant) is not None
        db.session.remove()
        downgrade(revision=BEFORE)
        with db.engine.connect() as conn:
            rows = {r.id: r for r in conn.execute(sa.text("SELECT * FROM merchants ORDER BY id"))}
        assert open_secret(rows[1].apiv3_key) == "k" * 32 and rows[1].serial_no == "ABC123"
        assert open_secret(rows[2].apiv3_key) == "a" * 32 and rows[2].sign_type == "HMAC-SHA256"
        assert open_secret(rows[3].private_key) == private and rows[3].platform_public_key == public
        db.engine.dispose()
