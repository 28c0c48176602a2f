"""The store's console pages: catalogue (yuan typed, exact fen stored), redeem-code batches with
their one-time CSV export (codes that really redeem), coupons and their limits, who may see and
change what, and an audit entry for every change."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from accounts import services as account_services
from accounts.models import AuditLog
from store import catalogue, coupons, orders, redemption
from store.models import CodeStatus, Coupon, Product, RedeemBatch, RedeemCode
from tests import factories
from wechat_service.dbtypes import utcnow
from wechat_service.errors import InvalidInputError
from wechat_service.extensions import db


@pytest.fixture
def shop(create_account: Any, create_staff: Any) -> dict[str, Any]:
    account, _, _ = create_account("plain")
    product = factories.topup(account.id, "topup-10", 980, 1000)
    db.session.commit()
    return {
        "account": account,
        "product": product,
        "manager": create_staff("account_manager", account_id=account.id),
        "base": f"/console/accounts/{account.id}",
    }


def _audits(action: str) -> list[AuditLog]:
    return list(
        db.session.scalars(sa.select(AuditLog).where(AuditLog.action == action).order_by(AuditLog.id))
    )


def _product_form(**overrides: str) -> dict[str, str]:
    return {
        "kind": "topup",
        "code": "topup-20",
        "name": "20 元话费",
        "price": "19.90",
        "face_value": "20",
        "package_code": "",
        "plan_code": "",
        "active_from": "",
        "active_until": "",
        "stock": "",
        "per_subscriber_limit": "",
        "points_price": "",
        **overrides,
    }


def _product(account_id: int, code: str) -> Product | None:
    return db.session.scalar(sa.select(Product).where(Product.account_id == account_id, Product.code == code))


# -- who sees what ---------------------------------------------------------------------------------


def _pages(shop: dict[str, Any]) -> dict[str, str]:
    batch, codes = redemption.create_batch(shop["account"].id, shop["product"].id, name="b", count=2)
    redemption.stash_export(batch, codes)
    coupon = coupons.add_coupon(
        shop["account"].id,
        code="SAVE1",
        name="save",
        kind="fixed",
        value=100,
        valid_from=utcnow(),
        valid_until=utcnow() + timedelta(days=1),
    )
    db.session.commit()
    base = shop["base"]
    return {
        "products": f"{base}/products",
        "product_new": f"{base}/products/new",
        "product_edit": f"{base}/products/{shop['product'].id}",
        "batches": f"{base}/redeem-batches",
        "batch": f"{base}/redeem-batches/{batch.id}",
        "coupons": f"{base}/coupons",
        "_coupon_id": str(coupon.id),
        "_batch_id": str(batch.id),
    }


def test_pages_render_for_a_manager_and_are_hidden_from_others(
    shop: dict[str, Any], create_account: Any, create_staff: Any
) -> None:
    pages = _pages(shop)
    other, _, _ = create_account("plain", name="Other account")
    outsider = create_staff("account_manager", account_id=other.id)
    analyst = create_staff("analyst", account_id=shop["account"].id)
    for name, url in pages.items():
        if name.startswith("_"):
            continue
        resp = shop["manager"].get(url)
        assert resp.status_code == 200, (name, resp.status_code)
        if name in ("products", "product_edit", "batches", "batch"):
            assert "10 元话费" in resp.get_data(as_text=True), name
        assert outsider.get(url).status_code == 404, name
        # Read-only roles read the lists, never the forms that change the catalogue.
        expected = 403 if name in ("product_new", "product_edit") else 200
        assert analyst.get(url).status_code == expected, name
    listing = analyst.get(pages["products"]).get_data(as_text=True)
    assert "New product" not in listing and "Deactivate" not in listing
    assert "Download CSV" not in analyst.get(pages["batch"]).get_data(as_text=True)
    # The account page's tabs lead here.
    tabs = shop["manager"].get(f"{shop['base']}/orders").get_data(as_text=True)
    for url in (pages["products"], pages["batches"], pages["coupons"]):
        assert f'href="{url}"' in tabs


def test_changes_are_forbidden_without_the_store_permission(
    shop: dict[str, Any], create_account: Any, create_staff: Any
) -> None:
    pages = _pages(shop)
    base, batch_id, coupon_id = shop["base"], pages["_batch_id"], pages["_coupon_id"]
    posts = {
        f"{base}/products/new": _product_form(),
        f"{base}/products/{shop['product'].id}": _product_form(),
        f"{base}/products/{shop['product'].id}/status": {"enabled": "0"},
        f"{base}/redeem-batches": {"product_id": str(shop["product"].id), "name": "x", "count": "3"},
        f"{base}/redeem-batches/{batch_id}/export": {},
        f"{base}/redeem-batches/{batch_id}/void": {},
        f"{base}/coupons": {
            "code": "NEW1",
            "name": "n",
            "kind": "fixed",
            "value": "1",
            "valid_until": "2099-01-01T00:00",
        },
        f"{base}/coupons/{coupon_id}/deactivate": {},
    }
    other, _, _ = create_account("plain", name="Other account")
    outsider = create_staff("account_manager", account_id=other.id)
    last = db.session.scalar(sa.select(sa.func.max(AuditLog.id))) or 0
    for role in ("analyst", "support", "marketer"):
        user = create_staff(role, account_id=shop["account"].id)
        for url, data in posts.items():
            assert user.form(url, data).status_code == 403, (role, url)
    for url, data in posts.items():
        assert outsider.form(url, data).status_code == 404, url
    db.session.expire_all()
    # Nothing changed: the product is on sale, the codes still wait for their one download.
    assert db.session.get(Product, shop["product"].id).enabled
    assert db.session.scalar(sa.select(sa.func.count()).select_from(RedeemBatch)) == 1
    assert redemption.export_expires_in(int(batch_id)) is not None
    assert db.session.get(Coupon, int(coupon_id)).enabled
    actions = set(db.session.scalars(sa.select(AuditLog.action).where(AuditLog.id > last)))
    assert actions == {"login"}  # only the sign-ins were recorded


def test_the_admin_and_an_org_unit_grant_may_manage(shop: dict[str, Any], create_staff: Any) -> None:
    admin = create_staff(admin=True)
    assert admin.form(f"{shop['base']}/products/new", _product_form(code="by-admin")).status_code == 302
    assert _product(shop["account"].id, "by-admin") is not None


# -- catalogue -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "fen"),
    [
        ("19.90", 1990),
        ("0.1", 10),
        ("0.01", 1),
        ("1", 100),
        ("19.9", 1990),
        (" 5.05 ", 505),
        ("9999999.99", 999999999),
    ],
)
def test_price_in_yuan_is_stored_as_exact_fen(shop: dict[str, Any], typed: str, fen: int) -> None:
    resp = shop["manager"].form(f"{shop['base']}/products/new", _product_form(price=typed, face_value=typed))
    assert resp.status_code == 302, resp.get_data(as_text=True)[:2000]
    product = _product(shop["account"].id, "topup-20")
    assert product is not None and product.price_fen == fen and product.face_value_fen == fen
    assert isinstance(product.price_fen, int)


@pytest.mark.parametrize(
    "typed", ["", "0", "0.00", "-1", "1.234", "abc", "1e3", "NaN", "Infinity", "19,90", "¥5", "10000000"]
)
def test_bad_prices_are_refused_with_a_field_error(shop: dict[str, Any], typed: str) -> None:
    resp = shop["manager"].form(f"{shop['base']}/products/new", _product_form(price=typed))
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert 'class="field has-error">\n  <span>Price' in body
    assert 'value="20 元话费"' in body  # the form keeps what was typed
    assert _product(shop["account"].id, "topup-20") is None and not _audits("product.create")


def test_product_rules_show_as_field_errors(shop: dict[str, Any]) -> None:
    form = shop["manager"].form
    url = f"{shop['base']}/products/new"
    body = form(url, _product_form(face_value="")).get_data(as_text=True)
    assert "required for a top-up" in body
    body = form(url, _product_form(kind="data_package", face_value="")).get_data(as_text=True)
    assert "required for a data package" in body
    body = form(url, _product_form(code="Bad Code")).get_data(as_text=True)
    assert "lower-case letters" in body
    body = form(url, _product_form(stock="-1", per_subscriber_limit="0")).get_data(as_text=True)
    assert body.count("has-error") == 2
    body = form(url, _product_form(active_from="2030-01-02T00:00", active_until="2030-01-01T00:00")).get_data(
        as_text=True
    )
    assert "after active_from" in body
    assert form(url, _product_form(code="topup-10")).status_code == 200  # the code is taken
    assert not _audits("product.create")


def test_create_edit_deactivate_are_audited(shop: dict[str, Any]) -> None:
    manager, base = shop["manager"], shop["base"]
    form = _product_form(
        kind="data_package",
        code="data-5g",
        name="5GB 流量包",
        price="29.90",
        face_value="",
        package_code="PKG5G",
        active_from="2030-01-01T08:00",  # the account's time (Asia/Shanghai): midnight UTC
        stock="100",
        per_subscriber_limit="2",
        points_price="3000",
    )
    assert manager.form(f"{base}/products/new", form).status_code == 302
    product = _product(shop["account"].id, "data-5g")
    assert product.active_from == datetime(2030, 1, 1, tzinfo=UTC)
    assert (product.stock, product.per_subscriber_limit, product.points_price) == (100, 2, 3000)
    (created,) = _audits("product.create")
    assert created.account_id == shop["account"].id and created.after["price_fen"] == 2990
    assert created.after["active_from"] == "2030-01-01T00:00:00+00:00"
    # The edit form shows yuan and local time, and saves only what changed.
    page = manager.get(f"{base}/products/{product.id}").get_data(as_text=True)
    assert 'value="29.90"' in page and 'value="2030-01-01T08:00"' in page
    edit = {k: v for k, v in form.items() if k not in ("kind", "code", "face_value")} | {"price": "24.5"}
    assert manager.form(f"{base}/products/{product.id}", edit).status_code == 302
    db.session.refresh(product)
    assert product.price_fen == 2450 and product.code == "data-5g"
    (updated,) = _audits("product.update")
    assert updated.before == {"price_fen": 2990} and updated.after == {"price_fen": 2450}
    # The code and the kind cannot be changed through the edit form.
    resp = manager.form(f"{base}/products/{product.id}", edit | {"kind": "voucher"})
    assert resp.status_code == 200 and "kind" in resp.get_data(as_text=True)
    db.session.refresh(product)
    assert product.kind.value == "data_package"
    assert manager.form(f"{base}/products/{product.id}/status", {"enabled": "0"}).status_code == 302
    db.session.refresh(product)
    assert not product.enabled and not catalogue.on_sale(product)
    assert "inactive" in manager.get(f"{base}/products").get_data(as_text=True)
    assert manager.form(f"{base}/products/{product.id}/status", {"enabled": "1"}).status_code == 302
    db.session.refresh(product)
    assert product.enabled
    assert [a.after for a in _audits("product.deactivate") + _audits("product.activate")] == [
        {"enabled": False},
        {"enabled": True},
    ]


def test_shared_org_unit_products_are_listed_but_not_editable_here(
    create_account: Any, create_staff: Any
) -> None:
    unit = account_services.add_org_unit("gd", "Guangdong", "province")
    account, _, _ = create_account("plain", org_unit_code="gd")
    shared = catalogue.add_product(
        org_unit_id=unit.id,
        code="shared-30",
        name="全省 30 元话费",
        kind="topup",
        price_fen=2990,
        face_value_fen=3000,
    )
    db.session.commit()
    manager = create_staff("account_manager", account_id=account.id)
    listing = manager.get(f"/console/accounts/{account.id}/products").get_data(as_text=True)
    assert "全省 30 元话费" in listing and "shared from org unit gd" in listing
    assert manager.get(f"/console/accounts/{account.id}/products/{shared.id}").status_code == 404
    assert (
        manager.form(
            f"/console/accounts/{account.id}/products/{shared.id}/status", {"enabled": "0"}
        ).status_code
        == 404
    )
    db.session.refresh(shared)
    assert shared.enabled


def test_another_accounts_product_is_not_found(shop: dict[str, Any], create_account: Any) -> None:
    other, _, _ = create_account("plain")
    theirs = catalogue.add_product(
        account_id=other.id, code="theirs", name="Theirs", kind="voucher", price_fen=100
    )
    db.session.commit()
    base = shop["base"]
    assert shop["manager"].get(f"{base}/products/{theirs.id}").status_code == 404
    resp = shop["manager"].form(
        f"{base}/redeem-batches", {"product_id": str(theirs.id), "name": "x", "count": "1"}
    )
    assert resp.status_code == 200 and not _audits("redeem_batch.create")


# -- redeem-code batches ---------------------------------------------------------------------------


def _create_batch(shop: dict[str, Any], count: int = 5, **extra: str) -> int:
    resp = shop["manager"].form(
        f"{shop['base']}/redeem-batches",
        {
            "product_id": str(shop["product"].id),
            "name": "春季活动",
            "count": str(count),
            "valid_days": "30",
            **extra,
        },
    )
    assert resp.status_code == 302, resp.get_data(as_text=True)[:2000]
    return int(resp.headers["Location"].rsplit("/", 1)[1])


def _codes(resp: Any) -> list[str]:
    text = resp.get_data(as_text=True).lstrip("\ufeff")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["code", "batch", "valid_from", "valid_until"]
    return [r[0] for r in rows[1:]]


def test_batch_codes_are_exported_once_and_really_redeem(shop: dict[str, Any]) -> None:
    manager, base, account = shop["manager"], shop["base"], shop["account"]
    batch_id = _create_batch(shop, count=5)
    page = manager.get(f"{base}/redeem-batches/{batch_id}").get_data(as_text=True)
    assert "ready to download <b>once</b>" in page
    first = manager.form(f"{base}/redeem-batches/{batch_id}/export")
    assert first.status_code == 200 and first.mimetype == "text/csv"
    assert (
        "attachment" in first.headers["Content-Disposition"] and first.headers["Cache-Control"] == "no-store"
    )
    codes = _codes(first)
    assert len(codes) == len(set(codes)) == 5
    # Only keyed hashes are in the database; no code is in the audit log either.
    hashes = set(db.session.scalars(sa.select(RedeemCode.code_hash).where(RedeemCode.batch_id == batch_id)))
    assert hashes == {redemption.code_hash(c) for c in codes}
    audit_text = str([(a.before, a.after, a.target) for a in db.session.scalars(sa.select(AuditLog))])
    assert not any(c in audit_text or c.replace("-", "") in audit_text for c in codes)
    # The second download is refused, and the page says who took the codes.
    second = manager.form(f"{base}/redeem-batches/{batch_id}/export")
    assert second.status_code == 302 and second.mimetype != "text/csv"
    page = manager.get(f"{base}/redeem-batches/{batch_id}").get_data(as_text=True)
    assert "already downloaded" in page  # the flash
    assert "Already exported: downloaded by " + manager.username in page and "Download CSV" not in page
    assert len(_audits("redeem_batch.export")) == 1 and len(_audits("redeem_batch.create")) == 1
    # The exported codes redeem through the store, once each.
    sub = factories.subscriber(account.id, "oCONSOLE000001", "13800138123")
    db.session.commit()
    result = redemption.redeem(account.id, sub.id, codes[0], "mp")
    assert result["product"] == "10 元话费" and result["phone"] == "138****8123"
    db.session.commit()
    with pytest.raises(InvalidInputError):
        redemption.redeem(account.id, sub.id, codes[0], "mp")
    db.session.rollback()
    counts = manager.get(f"{base}/redeem-batches/{batch_id}").get_data(as_text=True)
    assert redemption.code_counts([batch_id])[batch_id] == {"unused": 4, "redeemed": 1, "void": 0}
    assert '<td class="num">4</td>' in counts and '<td class="num">1</td>' in counts


def test_a_read_only_user_cannot_take_the_codes(shop: dict[str, Any], create_staff: Any) -> None:
    batch_id = _create_batch(shop, count=2)
    analyst = create_staff("analyst", account_id=shop["account"].id)
    assert analyst.form(f"{shop['base']}/redeem-batches/{batch_id}/export").status_code == 403
    assert len(_codes(shop["manager"].form(f"{shop['base']}/redeem-batches/{batch_id}/export"))) == 2


def test_codes_not_downloaded_in_time_are_gone(shop: dict[str, Any], redis_conn: Any) -> None:
    batch_id = _create_batch(shop, count=2)
    redis_conn.delete(f"redeem:export:{batch_id}")  # what the hour's expiry does
    page = shop["manager"].get(f"{shop['base']}/redeem-batches/{batch_id}").get_data(as_text=True)
    assert "never downloaded and are gone" in page
    assert shop["manager"].form(f"{shop['base']}/redeem-batches/{batch_id}/export").status_code == 302
    assert not _audits("redeem_batch.export")


def test_batch_input_is_validated(shop: dict[str, Any]) -> None:
    url = f"{shop['base']}/redeem-batches"
    product_id = str(shop["product"].id)
    for data, problem in (
        ({"product_id": product_id, "name": "x", "count": "0"}, "count"),
        ({"product_id": product_id, "name": "x", "count": "100001"}, "count"),
        ({"product_id": product_id, "name": "x", "count": "ten"}, "count"),
        ({"product_id": product_id, "name": "", "count": "1"}, "name"),
        ({"product_id": product_id, "name": "x", "count": "1", "valid_days": "0"}, "valid_days"),
        ({"product_id": "999999", "name": "x", "count": "1"}, "no such product"),
    ):
        resp = shop["manager"].form(url, data)
        body = resp.get_data(as_text=True)
        assert resp.status_code == 200, data
        if problem == "no such product":
            assert problem in body
        else:
            marker = 'class="field has-error">\n  <span>'
            assert f'name="{problem}"' in body.split(marker, 1)[1].split("</label>", 1)[0], data
    assert db.session.scalar(sa.select(sa.func.count()).select_from(RedeemBatch)) == 0


def test_voiding_a_batch_stops_its_unused_codes(shop: dict[str, Any]) -> None:
    manager, base, account = shop["manager"], shop["base"], shop["account"]
    batch_id = _create_batch(shop, count=3)
    codes = _codes(manager.form(f"{base}/redeem-batches/{batch_id}/export"))
    sub = factories.subscriber(account.id, "oCONSOLE000002", "13800138124")
    redemption.redeem(account.id, sub.id, codes[0], "mp")
    db.session.commit()
    assert manager.form(f"{base}/redeem-batches/{batch_id}/void").status_code == 302
    assert redemption.code_counts([batch_id])[batch_id] == {"unused": 0, "redeemed": 1, "void": 2}
    with pytest.raises(InvalidInputError):
        redemption.redeem(account.id, sub.id, codes[1], "mp")
    db.session.rollback()
    (entry,) = _audits("redeem_batch.void")
    assert entry.after == {"voided_codes": 2} and entry.target == f"batch {batch_id}"
    page = manager.get(f"{base}/redeem-batches/{batch_id}").get_data(as_text=True)
    assert "ended" in page and "Void this batch" not in page
    # Nothing left to void: refused, not audited twice.
    assert manager.form(f"{base}/redeem-batches/{batch_id}/void").status_code == 302
    assert len(_audits("redeem_batch.void")) == 1
    # A redeemed code handed back later (failed fulfilment) cannot be redeemed in a voided batch.
    db.session.execute(
        sa.update(RedeemCode).where(RedeemCode.status == CodeStatus.redeemed).values(status="unused")
    )
    db.session.commit()
    with pytest.raises(InvalidInputError):
        redemption.redeem(account.id, sub.id, codes[0], "mp")
    db.session.rollback()


# -- coupons ---------------------------------------------------------------------------------------


def _coupon_form(**overrides: str) -> dict[str, str]:
    return {
        "code": "spring5",
        "name": "春季立减",
        "kind": "fixed",
        "value": "5.50",
        "min_spend": "30",
        "per_person_limit": "1",
        "total_limit": "100",
        "valid_from": "",
        "valid_until": "2099-12-31T23:59",
        **overrides,
    }


def test_coupon_creation_converts_and_records(shop: dict[str, Any]) -> None:
    manager, base = shop["manager"], shop["base"]
    assert manager.form(f"{base}/coupons", _coupon_form()).status_code == 302
    coupon = db.session.scalar(sa.select(Coupon).where(Coupon.code == "SPRING5"))
    assert (coupon.kind.value, coupon.value, coupon.min_spend_fen) == ("fixed", 550, 3000)
    assert (coupon.per_person_limit, coupon.total_limit, coupon.enabled) == (1, 100, True)
    assert coupon.valid_until == datetime(2099, 12, 31, 15, 59, tzinfo=UTC)
    assert abs((coupon.valid_from - utcnow()).total_seconds()) < 60
    assert (
        manager.form(f"{base}/coupons", _coupon_form(code="PCT15", kind="percent", value="15")).status_code
        == 302
    )
    assert db.session.scalar(sa.select(Coupon.value).where(Coupon.code == "PCT15")) == 15
    created = _audits("coupon.create")
    assert [a.after["code"] for a in created] == ["SPRING5", "PCT15"] and created[0].after["value"] == 550


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"kind": "percent", "value": "150"}, "value"),
        ({"kind": "percent", "value": "0"}, "value"),
        ({"kind": "percent", "value": "12.5"}, "value"),
        ({"kind": "percent", "value": "²"}, "value"),  # str.isdigit says yes, int() says no
        ({"value": "abc"}, "value"),
        ({"value": "0"}, "value"),
        ({"value": "1.999"}, "value"),
        ({"min_spend": "-1"}, "min_spend"),
        ({"per_person_limit": "0"}, "per_person_limit"),
        ({"total_limit": "-5"}, "total_limit"),
        ({"per_person_limit": "5", "total_limit": "2"}, "per_person_limit"),
        ({"valid_from": "2099-12-31T23:59", "valid_until": "2099-01-01T00:00"}, "valid_until"),
        ({"valid_until": ""}, "valid_until"),
        ({"valid_until": "tomorrow"}, "valid_until"),
        ({"code": "x"}, "code"),
        ({"code": "has space"}, "code"),
        ({"kind": "gift"}, "kind"),
    ],
)
def test_coupon_limits_are_validated(shop: dict[str, Any], overrides: dict[str, str], field: str) -> None:
    resp = shop["manager"].form(f"{shop['base']}/coupons", _coupon_form(**overrides))
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200
    marker = 'class="field has-error">\n  <span>'
    assert marker in body
    assert f'name="{field}"' in body.split(marker, 1)[1].split("</label>", 1)[0], body.split(marker, 1)[1][
        :300
    ]
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Coupon)) == 0 and not _audits(
        "coupon.create"
    )


def test_duplicate_coupon_code_is_refused(shop: dict[str, Any]) -> None:
    url = f"{shop['base']}/coupons"
    assert shop["manager"].form(url, _coupon_form()).status_code == 302
    resp = shop["manager"].form(url, _coupon_form(name="again"))
    assert resp.status_code == 200 and "exists" in resp.get_data(as_text=True)
    assert len(_audits("coupon.create")) == 1


def test_coupon_usage_counts_and_deactivation(shop: dict[str, Any]) -> None:
    manager, base, account = shop["manager"], shop["base"], shop["account"]
    assert (
        manager.form(
            f"{base}/coupons", _coupon_form(min_spend="0", per_person_limit="", total_limit="3")
        ).status_code
        == 302
    )
    coupon = db.session.scalar(sa.select(Coupon).where(Coupon.code == "SPRING5"))
    made = []
    for i in range(2):
        sub = factories.subscriber(account.id, f"oCOUPONUSE{i:04d}", f"1380013{8200 + i}")
        made.append(factories.order(sub, shop["product"], f"key-{i:08d}", coupon_code="spring5"))
    db.session.commit()
    assert orders.close(made[1])  # an unpaid order closing gives its coupon use back
    db.session.commit()
    db.session.refresh(coupon)
    assert coupons.usage([coupon.id])[coupon.id] == {
        "held": 1,
        "released": 1,
        "subscribers": 1,
        "discount_fen": 550,
    }
    page = manager.get(f"{base}/coupons").get_data(as_text=True)
    assert f"{coupon.used_count} / 3" in page and "5.50 元 off" in page
    assert manager.form(f"{base}/coupons/{coupon.id}/deactivate").status_code == 302
    db.session.refresh(coupon)
    assert not coupon.enabled
    (entry,) = _audits("coupon.deactivate")
    assert entry.after == {"enabled": False, "used_count": coupon.used_count}
    assert "inactive" in manager.get(f"{base}/coupons").get_data(as_text=True)
    # Deactivating twice is refused and not audited again.
    assert manager.form(f"{base}/coupons/{coupon.id}/deactivate").status_code == 302
    assert len(_audits("coupon.deactivate")) == 1


def test_an_edit_does_not_overwrite_stock_taken_by_orders_meanwhile(shop: dict[str, Any]) -> None:
    manager, base, account = shop["manager"], shop["base"], shop["account"]
    product = shop["product"]
    product.stock = 10
    db.session.commit()
    page = manager.get(f"{base}/products/{product.id}").get_data(as_text=True)
    assert 'name="stock_seen" value="10"' in page
    form = {
        "name": "10 元话费",
        "price": "9.80",
        "face_value": "10",
        "stock": "10",
        "stock_seen": "10",
    }
    # Two orders take stock while the operator edits the price.
    for i in range(2):
        sub = factories.subscriber(account.id, f"oSTOCK{i:08d}", f"1380013{8300 + i}")
        factories.order(sub, product, f"stock-key-{i:04d}")
    db.session.commit()
    assert manager.form(f"{base}/products/{product.id}", form | {"price": "9.50"}).status_code == 302
    db.session.refresh(product)
    assert (product.price_fen, product.stock) == (950, 8)
    form["price"] = "9.50"
    # Changing the stock from a stale view is refused, not silently applied.
    resp = manager.form(f"{base}/products/{product.id}", form | {"stock": "100"})
    assert resp.status_code == 200 and "stock changed while you were editing" in resp.get_data(as_text=True)
    db.session.refresh(product)
    assert product.stock == 8
    assert (
        manager.form(f"{base}/products/{product.id}", form | {"stock": "100", "stock_seen": "8"}).status_code
        == 302
    )
    db.session.refresh(product)
    assert product.stock == 100
    assert [a.after for a in _audits("product.update")] == [{"price_fen": 950}, {"stock": 100}]
