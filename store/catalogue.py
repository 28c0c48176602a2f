"""The catalogue: products of an account, or of an org unit and so of every account under it."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from accounts.models import Account, OrgUnit
from store.models import Product, ProductKind
from wechat_service.dbtypes import utcnow
from wechat_service.dbutil import execute_dml
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
    errors = _problems(
        kind=kind,
        code=code,
        price_fen=price_fen,
        face_value_fen=face_value_fen,
        package_code=package_code,
        plan_code=plan_code,
        stock=stock,
        per_subscriber_limit=per_subscriber_limit,
        points_price=points_price,
        active_from=active_from,
        active_until=active_until,
    )
    if (account_id is None) == (org_unit_id is None):
        errors["owner"] = ["an account or an org unit"]
    if errors:
        raise InvalidInputError("invalid product", fields=errors)
    if account_id and db.session.scalar(
        sa.select(Product.id).where(Product.account_id == account_id, Product.code == code)
    ):
        raise ConflictError(f"product {code!r} exists in this account")
    product = Product(
        code=code,
        name=name,
        kind=ProductKind(kind),
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


def _problems(
    *,
    kind: str,
    code: str,
    price_fen: int,
    face_value_fen: int | None,
    package_code: str | None,
    plan_code: str | None,
    stock: int | None,
    per_subscriber_limit: int | None,
    points_price: int | None,
    active_from: datetime | None,
    active_until: datetime | None,
) -> dict[str, list[str]]:
    """The product rules, shared by creation and editing: field → messages."""
    errors: dict[str, list[str]] = {}
    try:
        kind_enum: ProductKind | None = ProductKind(kind)
    except ValueError:
        errors["kind"] = [f"one of {[k.value for k in ProductKind]}"]
        kind_enum = None
    if not CODE_RE.match(code or ""):
        errors["code"] = ["lower-case letters, digits, . _ -"]
    if not isinstance(price_fen, int) or isinstance(price_fen, bool) or price_fen <= 0:
        errors["price_fen"] = ["a positive whole number of fen"]
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
    if per_subscriber_limit is not None and per_subscriber_limit <= 0:
        errors["per_subscriber_limit"] = ["positive, or none"]
    if active_from and active_until and active_until <= active_from:
        errors["active_until"] = ["after active_from"]
    return errors


# What an operator may change on an existing product. The code (its identity in orders, batches
# and reports) and the kind (what a pending fulfilment carries out) stay as created.
EDITABLE = (
    "name",
    "price_fen",
    "face_value_fen",
    "package_code",
    "plan_code",
    "stock",
    "per_subscriber_limit",
    "points_price",
    "active_from",
    "active_until",
)


def own_product(account_id: int, product_id: int) -> Product:
    """A product the account owns (not one shared from an org unit, which other accounts sell too)."""
    product = db.session.scalar(
        sa.select(Product).where(Product.id == product_id, Product.account_id == account_id)
    )
    if product is None:
        raise NotFoundError("no such product in this account")
    return product


UNSEEN = object()


def update_product(
    account_id: int, product_id: int, changes: dict[str, Any], *, stock_seen: Any = UNSEEN
) -> Product:
    """Apply an operator's edit. ``stock_seen`` is the stock the edit form showed: orders take stock
    with their own atomic UPDATE while the form is open, so an unchanged stock is left alone, and a
    changed one is written only if nobody moved it meanwhile (else 409, reload and retry)."""
    unknown = set(changes) - set(EDITABLE)
    if unknown:
        raise InvalidInputError("these fields cannot be changed", fields={k: ["read-only"] for k in unknown})
    product = own_product(account_id, product_id)
    changes = dict(changes)
    if stock_seen is not UNSEEN and "stock" in changes and changes["stock"] == stock_seen:
        del changes["stock"]
    values = {k: getattr(product, k) for k in EDITABLE} | changes
    errors = _problems(
        kind=product.kind.value, code=product.code, **{k: v for k, v in values.items() if k != "name"}
    )
    if not (values["name"] or "").strip():
        errors["name"] = ["required"]
    if errors:
        raise InvalidInputError("invalid product", fields=errors)
    new_stock = changes.pop("stock", UNSEEN)
    for key, value in changes.items():
        setattr(product, key, value)
    db.session.flush()
    if new_stock is not UNSEEN:
        query = sa.update(Product).where(Product.id == product.id).values(stock=new_stock)
        if stock_seen is not UNSEEN:
            query = query.where(
                Product.stock.is_(None) if stock_seen is None else Product.stock == stock_seen
            )
        if execute_dml(query.execution_options(synchronize_session=False)).rowcount != 1:
            raise ConflictError(
                "the stock changed while you were editing (orders took some): reload and try again",
                fields={"stock": ["changed meanwhile"]},
            )
        db.session.refresh(product, ["stock"])
    return product


def set_product_enabled(account_id: int, product_id: int, enabled: bool) -> Product:
    product = own_product(account_id, product_id)
    product.enabled = enabled
    db.session.flush()
    return product


def set_fund_pool(account_id: int, product_id: int, pool_id: int | None) -> Product:
    """Have the product's fulfilments drawn from a fund pool (None: paid as usual). The pool must be
    the account's own (checked by the caller, payments/operations.py)."""
    product = own_product(account_id, product_id)
    product.fund_pool_id = pool_id
    db.session.flush()
    return product


def funded_by(account_id: int, pool_id: int) -> list[Product]:
    return list(
        db.session.scalars(
            sa.select(Product).where(Product.account_id == account_id, Product.fund_pool_id == pool_id)
        )
    )
