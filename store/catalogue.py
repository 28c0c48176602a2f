"""The catalogue: products of an account, or of an org unit and so of every account under it."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from store.models import Product, ProductKind
from wechat_service.dbtypes import utcnow
from wechat_service.errors import ConflictError, InvalidInputError, NotFoundError
from wechat_service.extensions import db

CODE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def add_product(
    *,
    code: str,
    name: str,
    kind: str,
    price_fen: int,
    account_id: int | None = None,
    org_unit_id: int | None = None,
    face_value_fen: int | None = None,
    package_code: str | None = None,
    plan_code: str | None = None,
    stock: int | None = None,
    per_subscriber_limit: int | None = None,
    points_price: int | None = None,
    active_from: datetime | None = None,
    active_until: datetime | None = None,
) -> Product:
    errors: dict[str, list[str]] = {}
    try:
        kind_enum = ProductKind(kind)
    except ValueError:
        errors["kind"] = [f"one of {[k.value for k in ProductKind]}"]
        kind_enum = None
    if not CODE_RE.match(code or ""):
        errors["code"] = ["lower-case letters, digits, . _ -"]
    if not isinstance(price_fen, int) or price_fen <= 0:
        errors["price_fen"] = ["a positive whole number of fen"]
    if (account_id is None) == (org_unit_id is None):
        errors["owner"] = ["an account or an org unit"]
    if kind_enum is ProductKind.topup and (not face_value_fen or face_value_fen <= 0):
        errors["face_value_fen"] = ["required for a top-up"]
    if kind_enum is ProductKind.data_package and not package_code:
        errors["package_code"] = ["required for a data package"]
    if kind_enum is ProductKind.plan_change and not plan_code:
        errors["plan_code"] = ["required for a plan change"]
    if points_price is not None and points_price <= 0:
        errors["points_price"] = ["positive, or none"]
    if stock is not None and stock < 0:
        errors["stock"] = ["not negative"]
    if active_from and active_until and active_until <= active_from:
        errors["active_until"] = ["after active_from"]
    if errors:
        raise InvalidInputError("invalid product", fields=errors)
    if account_id and db.session.scalar(
        sa.select(Product.id).where(Product.account_id == account_id, Product.code == code)
    ):
        raise ConflictError(f"product {code!r} exists in this account")
    product = Product(
        code=code,
        name=name,
        kind=kind_enum,
        price_fen=price_fen,
        account_id=account_id,
        org_unit_id=org_unit_id,
        face_value_fen=face_value_fen,
        package_code=package_code,
        plan_code=plan_code,
        stock=stock,
        per_subscriber_limit=per_subscriber_limit,
        active_from=active_from,
        active_until=active_until,
        enabled=True,
        points_price=points_price,
    )
    db.session.add(product)
    db.session.flush()
    return product


def visible_products(account_id: int) -> sa.Select[Any]:
    """The account's own products and those of every org unit above it."""
    from accounts.models import Account, OrgUnit

    units: list[int] = []
    unit_id = db.session.scalar(sa.select(Account.org_unit_id).where(Account.id == account_id))
    while unit_id is not None and len(units) < 16:
        units.append(unit_id)
        unit_id = db.session.scalar(sa.select(OrgUnit.parent_id).where(OrgUnit.id == unit_id))
    owner = Product.account_id == account_id
    if units:
        owner = sa.or_(owner, Product.org_unit_id.in_(units))
    return sa.select(Product).where(owner).order_by(Product.price_fen, Product.id)


def product_for(account_id: int, product_id: int) -> Product:
    product = db.session.scalar(visible_products(account_id).where(Product.id == product_id))
    if product is None:
        raise NotFoundError("no such product")
    return product


def on_sale(product: Product, now: datetime | None = None) -> bool:
    now = now or utcnow()
    return (
        product.enabled
        and (product.active_from is None or product.active_from <= now)
        and (product.active_until is None or now < product.active_until)
    )
