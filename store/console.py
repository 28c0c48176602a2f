"""The store's console pages (server-rendered, under /console like the account pages): catalogue,
redeem-code batches with their one-time CSV export, coupons.

Thin: parse (store/console_forms.py) → authorise and change and audit (store/operations.py) →
commit → render. Reading needs the account's VIEW permission, changing it needs STORE.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from flask import Response, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from markupsafe import Markup
from marshmallow import ValidationError

from accounts import access as acl
from accounts.front_doors.console import (
    client_ip,
    console_blueprint,
    current_access,
    login_required,
    paginate,
)
from accounts.services import list_org_units
from accounts.staff import user_by_id
from payments import intents, refunds
from store import catalogue, coupons, operations, orders, redemption
from store.console_forms import (
    PRODUCT_FORM_NAMES,
    BatchCreateForm,
    CouponCreateForm,
    ProductCreateForm,
    ProductEditForm,
    fen_to_yuan,
    field_errors,
    yuan_to_fen,
)
from store.models import CouponKind, ProductKind
from store.services import mask_phone
from wechat_service.dbtypes import utcnow
from wechat_service.errors import ServiceError
from wechat_service.exports import csv_response
from wechat_service.extensions import db

bp = console_blueprint("store_console", __name__)


def _fail(exc: ServiceError, names: dict[str, str] | None = None) -> dict[str, list[str]]:
    db.session.rollback()
    flash(exc.message, "error")
    return field_errors(exc.fields, names)


def _invalid(exc: ValidationError, names: dict[str, str] | None = None) -> dict[str, list[str]]:
    db.session.rollback()
    flash("Please correct the marked fields.", "error")
    return field_errors(exc.messages, names)


def _local(value: datetime | None, tz: str) -> str:
    """A stored UTC time as a ``datetime-local`` value in the account's timezone."""
    return value.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%dT%H:%M") if value else ""


def _render(template: str, account: Any, **context: Any) -> str:
    """Every store page shows money in yuan and times in the account's own timezone."""
    zone = ZoneInfo(account.timezone)

    def when(value: datetime | None) -> str:
        return value.astimezone(zone).strftime("%Y-%m-%d %H:%M") if value else "—"

    return render_template(
        template, account=account, yuan=fen_to_yuan, when=when, tz=account.timezone, **context
    )


# -- catalogue -------------------------------------------------------------------------------------


@bp.get("/accounts/<int:account_id>/products")
@login_required
def product_list(account_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.VIEW)
    page = paginate(catalogue.visible_products(account.id), per_page=50)
    units = {u.id: u.code for u in list_org_units()}
    return _render(
        "store/console_products.html",
        account,
        page=page,
        products=page.items,
        units=units,
        now=utcnow(),
        on_sale=catalogue.on_sale,
        can_edit=access.can(acl.STORE, account.id),
    )


def _product_form_values(product: Any, tz: str) -> dict[str, str]:
    return {
        "kind": product.kind.value,
        "code": product.code,
        "name": product.name,
        "price": fen_to_yuan(product.price_fen),
        "face_value": fen_to_yuan(product.face_value_fen),
        "package_code": product.package_code or "",
        "plan_code": product.plan_code or "",
        "active_from": _local(product.active_from, tz),
        "active_until": _local(product.active_until, tz),
        "stock": "" if product.stock is None else str(product.stock),
        "stock_seen": "none" if product.stock is None else str(product.stock),
        "per_subscriber_limit": ""
        if product.per_subscriber_limit is None
        else str(product.per_subscriber_limit),
        "points_price": "" if product.points_price is None else str(product.points_price),
    }


@bp.route("/accounts/<int:account_id>/products/new", methods=["GET", "POST"])
@login_required
def product_new(account_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.STORE)
    errors: dict[str, list[str]] = {}
    form = request.form
    if request.method == "POST":
        try:
            fields = ProductCreateForm(tz=account.timezone).load(form.to_dict())
            product = operations.create_product(access, account.id, fields, client_ip())
            db.session.commit()
        except ValidationError as exc:
            errors = _invalid(exc, PRODUCT_FORM_NAMES)
        except ServiceError as exc:
            errors = _fail(exc, PRODUCT_FORM_NAMES)
        else:
            flash(f"Product {product.name} created.", "success")
            return redirect(url_for("store_console.product_list", account_id=account.id))
    return _render(
        "store/console_product_form.html",
        account,
        product=None,
        form=form,
        errors=errors,
        kinds=[k.value for k in ProductKind],
    )


@bp.route("/accounts/<int:account_id>/products/<int:product_id>", methods=["GET", "POST"])
@login_required
def product_edit(account_id: int, product_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.STORE)
    product = catalogue.own_product(account.id, product_id)
    errors: dict[str, list[str]] = {}
    form: Any = request.form
    if request.method == "POST":
        try:
            changes = ProductEditForm(tz=account.timezone).load(form.to_dict())
            seen = changes.pop("stock_seen")
            stock_seen = catalogue.UNSEEN if seen is None else None if seen == "none" else int(seen)
            operations.update_product(access, account.id, product.id, changes, client_ip(), stock_seen)
            db.session.commit()
        except ValidationError as exc:
            errors = _invalid(exc, PRODUCT_FORM_NAMES)
        except ServiceError as exc:
            errors = _fail(exc, PRODUCT_FORM_NAMES)
        else:
            flash(f"Product {product.name} saved.", "success")
            return redirect(url_for("store_console.product_list", account_id=account.id))
        product = catalogue.own_product(account.id, product_id)  # reloaded after the rollback
    else:
        form = _product_form_values(product, account.timezone)
    return _render(
        "store/console_product_form.html",
        account,
        product=product,
        form=form,
        errors=errors,
        kinds=[k.value for k in ProductKind],
    )


@bp.post("/accounts/<int:account_id>/products/<int:product_id>/status")
@login_required
def product_status(account_id: int, product_id: int) -> ResponseReturnValue:
    enabled = request.form.get("enabled") == "1"
    product = operations.set_product_enabled(current_access(), account_id, product_id, enabled, client_ip())
    db.session.commit()
    flash(f"Product {product.name} {'activated' if enabled else 'deactivated'}.", "success")
    return redirect(url_for("store_console.product_list", account_id=account_id))


# -- redeem-code batches ---------------------------------------------------------------------------


@bp.route("/accounts/<int:account_id>/redeem-batches", methods=["GET", "POST"])
@login_required
def batch_list(account_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.VIEW)
    errors: dict[str, list[str]] = {}
    form = request.form
    if request.method == "POST":
        acl.account_for(access, account_id, acl.STORE)
        try:
            fields = BatchCreateForm(tz=account.timezone).load(form.to_dict())
            batch = operations.create_batch(access, account.id, fields, client_ip())
            db.session.commit()
        except ValidationError as exc:
            errors = _invalid(exc)
        except ServiceError as exc:
            errors = _fail(exc)
        else:
            flash(
                f"Batch {batch.name}: {batch.count} codes created. Download them now — only once.", "success"
            )
            return redirect(url_for("store_console.batch_detail", account_id=account.id, batch_id=batch.id))
    page = paginate(redemption.batches_query(account.id))
    products = {p.id: p for p in db.session.scalars(catalogue.visible_products(account.id))}
    return _render(
        "store/console_batches.html",
        account,
        page=page,
        batches=page.items,
        counts=redemption.code_counts([b.id for b in page.items]),
        states={b.id: redemption.batch_state(b) for b in page.items},
        products=products,
        form=form,
        errors=errors,
        can_edit=access.can(acl.STORE, account.id),
    )


@bp.get("/accounts/<int:account_id>/redeem-batches/<int:batch_id>")
@login_required
def batch_detail(account_id: int, batch_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.VIEW)
    batch = redemption.batch_for(account.id, batch_id)
    exported = operations.export_record(account.id, batch.id)
    return _render(
        "store/console_batch_detail.html",
        account,
        batch=batch,
        product=catalogue.product_for(account.id, batch.product_id),
        counts=redemption.code_counts([batch.id])[batch.id],
        state=redemption.batch_state(batch),
        export_expires_in=redemption.export_expires_in(batch.id),
        exported=exported,
        exported_by=_username(exported.user_id) if exported else None,
        can_edit=access.can(acl.STORE, account.id),
    )


def _username(user_id: int | None) -> str:
    return user_by_id(user_id).username if user_id else "?"


@bp.post("/accounts/<int:account_id>/redeem-batches/<int:batch_id>/export")
@login_required
def batch_export(account_id: int, batch_id: int) -> ResponseReturnValue:
    """The batch's clear codes as CSV, once. A POST with the CSRF token: it consumes them."""
    try:
        batch, text, sealed = operations.export_batch(current_access(), account_id, batch_id, client_ip())
    except ServiceError as exc:
        if exc.status in (403, 404):
            raise
        _fail(exc)
        return redirect(url_for("store_console.batch_detail", account_id=account_id, batch_id=batch_id))
    try:
        db.session.commit()
    except Exception:
        # Not recorded as exported, so not exported: the codes wait for the next try.
        db.session.rollback()
        redemption.restore_export(batch_id, sealed)
        raise
    # A BOM so that Excel, which opens most of these files, reads the UTF-8 batch name correctly.
    return Response(
        "\ufeff" + text,
        mimetype="text/csv",
        headers={
            "Content-Disposition": f'attachment; filename="redeem-batch-{batch.id}.csv"',
            "Cache-Control": "no-store",
        },
    )


@bp.post("/accounts/<int:account_id>/redeem-batches/<int:batch_id>/void")
@login_required
def batch_void(account_id: int, batch_id: int) -> ResponseReturnValue:
    try:
        voided = operations.void_batch(current_access(), account_id, batch_id, client_ip())
        db.session.commit()
        redemption.drop_export(batch_id)  # only once the void is committed
    except ServiceError as exc:
        if exc.status in (403, 404):
            raise
        _fail(exc)
    else:
        flash(f"Batch voided: {voided} unused codes can no longer be redeemed.", "success")
    return redirect(url_for("store_console.batch_detail", account_id=account_id, batch_id=batch_id))


# -- orders export ---------------------------------------------------------------------------------


@bp.get("/accounts/<int:account_id>/orders.csv")
@login_required
def orders_csv(account_id: int) -> ResponseReturnValue:
    """The Orders page's search as CSV: same permission and phone masking as the page."""

    access = current_access()
    account = acl.account_for(access, account_id, acl.ORDERS)
    rows = orders.export_rows(
        account.id,
        q=request.args.get("q") or None,
        status=request.args.get("status") or None,
        unmasked=access.unmasked(account.id),
    )
    return csv_response(f"orders-{account.appid}.csv", orders.EXPORT_COLUMNS, rows)


# -- coupons ---------------------------------------------------------------------------------------


@bp.route("/accounts/<int:account_id>/coupons", methods=["GET", "POST"])
@login_required
def coupon_list(account_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.VIEW)
    errors: dict[str, list[str]] = {}
    form = request.form
    if request.method == "POST":
        acl.account_for(access, account_id, acl.STORE)
        try:
            fields = CouponCreateForm(tz=account.timezone).load(form.to_dict())
            coupon = operations.create_coupon(access, account.id, fields, client_ip())
            db.session.commit()
        except ValidationError as exc:
            errors = _invalid(exc, {"min_spend_fen": "min_spend"})
        except ServiceError as exc:
            errors = _fail(exc, {"min_spend_fen": "min_spend"})
        else:
            flash(f"Coupon {coupon.code} created.", "success")
            return redirect(url_for("store_console.coupon_list", account_id=account.id))
    page = paginate(coupons.coupons_query(account.id))
    return _render(
        "store/console_coupons.html",
        account,
        page=page,
        coupons=page.items,
        usage=coupons.usage([c.id for c in page.items]),
        now=utcnow(),
        kinds=[k.value for k in CouponKind],
        form=form,
        errors=errors,
        can_edit=access.can(acl.STORE, account.id),
    )


@bp.post("/accounts/<int:account_id>/coupons/<int:coupon_id>/deactivate")
@login_required
def coupon_deactivate(account_id: int, coupon_id: int) -> ResponseReturnValue:
    try:
        coupon = operations.deactivate_coupon(current_access(), account_id, coupon_id, client_ip())
        db.session.commit()
    except ServiceError as exc:
        if exc.status in (403, 404):
            raise
        _fail(exc)
    else:
        flash(f"Coupon {coupon.code} deactivated.", "success")
    return redirect(url_for("store_console.coupon_list", account_id=account_id))


# -- orders ----------------------------------------------------------------------------------------


def _order_row(order: Any, unmasked: bool) -> dict[str, Any]:
    return {
        "id": order.id,
        "out_trade_no": order.out_trade_no,
        "amount_fen": order.amount_fen,
        "status": order.status.value,
        "provider": order.provider,
        "created_at": order.created_at,
        "paid_at": order.paid_at,
        "phone": order.phone if unmasked else mask_phone(order.phone),
    }


@bp.get("/accounts/<int:account_id>/orders")
@login_required
def order_list(account_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.ORDERS)
    page = paginate(
        orders.search(account.id, q=request.args.get("q") or None, status=request.args.get("status") or None)
    )
    unmasked = access.unmasked(account.id)
    return render_template(
        "store/console_orders.html",
        account=account,
        page=page,
        args=request.args,
        rows=[_order_row(o, unmasked) for o in page.items],
    )


@bp.route("/accounts/<int:account_id>/orders/<int:order_id>", methods=["GET", "POST"])
@login_required
def order_detail(account_id: int, order_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.ORDERS)
    order = orders.order_for(account.id, order_id)
    if request.method == "POST":
        try:
            typed = (request.form.get("amount") or "").strip()
            try:
                amount = yuan_to_fen(typed) if typed else None
            except ValueError:
                raise acl.InvalidInputError(
                    "an amount in yuan, e.g. 5.00", fields={"amount": ["invalid"]}
                ) from None
            operations.refund_order(
                access, account_id, order_id, request.form.get("reason") or "", client_ip(), amount
            )
            db.session.commit()
        except ServiceError as exc:
            _fail(exc)
        else:
            flash("Refund requested." if amount else "Refunded in full.", "success")
        return redirect(url_for(".order_detail", account_id=account_id, order_id=order_id))
    return render_template(
        "store/console_order_detail.html",
        account=account,
        order=_order_row(order, access.unmasked(account.id)),
        history=orders.history(order.id),
        payments=intents.transactions(order),
        refunds=refunds.of(order),
        refundable_fen=order.amount_fen - order.refunded_fen,
        can_refund=access.can(acl.REFUND, account.id)
        and order.status.value == "fulfilled"
        and order.refunded_fen < order.amount_fen,
    )


# -- products drawing on a fund pool (a section of payments' pool page) ------------------------------


@bp.post("/accounts/<int:account_id>/fund-pools/<int:pool_id>/products")
@login_required
def pool_products(account_id: int, pool_id: int) -> ResponseReturnValue:
    """Fund a product from this pool, or stop funding it."""
    try:
        product_id = int(request.form.get("product_id") or 0)
        operations.fund_product(
            current_access(), account_id, pool_id, product_id, request.form.get("funded") == "1", client_ip()
        )
        db.session.commit()
    except ValueError:
        flash("choose a product", "error")
    except ServiceError as exc:
        _fail(exc)
    return redirect(url_for("payments_console.pool_detail", account_id=account_id, pool_id=pool_id))


def pool_products_section(_sender: Any, account: Any, pool: Any) -> Markup:
    """Receiver of payments' ``pool_page``: the products drawing on the pool, and the form to
    fund one more (posted to ``pool_products`` above)."""
    return Markup(  # noqa: S704 - rendered by our own autoescaping template
        render_template(
            "store/_pool_products.html",
            account=account,
            pool=pool,
            funded=catalogue.funded_by(account.id, pool.id),
            products=[p for p in db.session.scalars(catalogue.visible_products(account.id)) if p.account_id],
            yuan=fen_to_yuan,
        )
    )
