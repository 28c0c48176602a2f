"""Staff JSON for the store under /api/v1: orders, their CSV and refunds (session + CSRF, in the
OpenAPI document). The mini-program's JSON is ``store/mp.py``."""

from __future__ import annotations

from typing import Any

from flask import request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import Unauthorized

from accounts import access as acl
from accounts.front_doors.console import (
    check_url_ids,
    client_ip,
    current_access,
    load_user,
    page_body,
    paginate,
)
from payments import refunds
from store import operations, orders
from store.schemas import OrderPageSchema, OrderQuerySchema, OrderSchema, RefundSchema
from store.services import mask_phone
from wechat_service.exports import csv_response
from wechat_service.extensions import ApiBlueprint as Blueprint
from wechat_service.extensions import db

blp = Blueprint("store_api", __name__, url_prefix="/api/v1", description="Store: orders and refunds")


@blp.before_request
def _authorise_first() -> None:
    """Before any body is parsed: signed in, and the account in the URL visible to the user."""
    if load_user() is None:
        raise Unauthorized("sign in to the console first")
    check_url_ids()
    account_id = (request.view_args or {}).get("account_id")
    if account_id is not None:
        acl.account_for(current_access(), account_id, acl.VIEW)


def _order(order: Any, unmasked: bool) -> dict[str, Any]:
    return {
        "id": order.id,
        "out_trade_no": order.out_trade_no,
        "amount_fen": order.amount_fen,
        "refunded_fen": order.refunded_fen,
        "status": order.status.value,
        "provider": order.provider,
        "created_at": order.created_at.isoformat(),
        "paid_at": order.paid_at.isoformat() if order.paid_at else None,
        "phone": order.phone if unmasked else mask_phone(order.phone),
        "history": [
            {"from": e.from_status, "to": e.to_status, "at": e.at.isoformat(), "detail": e.detail}
            for e in orders.history(order.id)
        ],
        "refunds": [
            {
                "out_refund_no": r.out_refund_no,
                "amount_fen": r.amount_fen,
                "status": r.status.value,
                "reason": r.reason,
                "created_at": r.created_at.isoformat(),
            }
            for r in refunds.of(order)
        ],
    }


@blp.get("/accounts/<int:account_id>/orders")
@blp.arguments(OrderQuerySchema, location="query")
@blp.response(200, OrderPageSchema)
def order_list(query: dict[str, Any], account_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.ORDERS)
    page = paginate(
        orders.search(account.id, q=query["q"], status=query["status"]), query["page"], query["per_page"]
    )
    return page_body([_order(o, access.unmasked(account.id)) for o in page.items], page)


@blp.get("/accounts/<int:account_id>/orders.csv")
@blp.arguments(OrderQuerySchema(only=("q", "status")), location="query")
@blp.response(200, {"type": "string"}, content_type="text/csv", description="orders as CSV")
def order_csv(query: dict[str, Any], account_id: int) -> ResponseReturnValue:
    """The orders a search finds, as CSV (phone numbers masked unless the role allows)."""
    access = current_access()
    account = acl.account_for(access, account_id, acl.ORDERS)
    rows = orders.export_rows(
        account.id, q=query["q"], status=query["status"], unmasked=access.unmasked(account.id)
    )
    return csv_response(f"orders-{account.appid}.csv", orders.EXPORT_COLUMNS, rows)


@blp.get("/accounts/<int:account_id>/orders/<int:order_id>")
@blp.response(200, OrderSchema)
def order_get(account_id: int, order_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.ORDERS)
    return _order(orders.order_for(account.id, order_id), access.unmasked(account.id))


@blp.post("/accounts/<int:account_id>/orders/<int:order_id>/refund")
@blp.arguments(RefundSchema)
@blp.response(200, OrderSchema)
def order_refund(data: dict[str, Any], account_id: int, order_id: int) -> ResponseReturnValue:
    access = current_access()
    order = operations.refund_order(
        access, account_id, order_id, data["reason"], client_ip(), data["amount_fen"]
    )
    db.session.commit()
    return _order(order, access.unmasked(account_id))
