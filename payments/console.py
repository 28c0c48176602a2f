"""The payments console pages: daily reconciliation reports (with CSV export) and fund pools.

Thin: parse → authorise, change and audit (payments/operations.py) → commit → render. Reading
and changing both need FINANCE on the account.
"""

from __future__ import annotations

from datetime import date, timedelta

from flask import Response, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from accounts import access as acl
from accounts.front_doors.console import (
    client_ip,
    console_blueprint,
    current_access,
    form_failed,
    login_required,
)
from payments import funds, operations, reconciliation
from payments.reconciliation import CHINA
from payments.signals import pool_page
from wechat_service.dbtypes import utcnow
from wechat_service.errors import ServiceError
from wechat_service.extensions import db
from wechat_service.money import fen_to_yuan, yuan_to_fen

bp = console_blueprint("payments_console", __name__)
_fail = form_failed


@bp.route("/accounts/<int:account_id>/reconciliation", methods=["GET", "POST"])
@login_required
def reconciliation_list(account_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.FINANCE)
    yesterday = utcnow().astimezone(CHINA).date() - timedelta(days=1)
    if request.method == "POST":
        try:
            try:
                day = date.fromisoformat(request.form.get("bill_date") or "")
            except ValueError:
                raise acl.InvalidInputError(
                    "a date, e.g. 2026-11-21", fields={"bill_date": ["invalid"]}
                ) from None
            done = operations.reconcile(access, account.id, day, client_ip())
            db.session.commit()
        except ServiceError as exc:
            _fail(exc)
        else:
            flash(f"Reconciled {day}: " + ", ".join(r.status.value for r in done), "success")
        return redirect(url_for("payments_console.reconciliation_list", account_id=account.id))
    return render_template(
        "payments/console_reconciliation.html",
        account=account,
        runs=reconciliation.runs(account.id),
        yesterday=yesterday,
        yuan=fen_to_yuan,
    )


@bp.get("/accounts/<int:account_id>/reconciliation/<int:run_id>")
@login_required
def reconciliation_detail(account_id: int, run_id: int) -> ResponseReturnValue:
    account = acl.account_for(current_access(), account_id, acl.FINANCE)
    run = reconciliation.run_for(account.id, run_id) or abort(404)
    return render_template(
        "payments/console_reconciliation_detail.html",
        account=account,
        run=run,
        items=reconciliation.items_of(run.id),
        yuan=fen_to_yuan,
    )


@bp.get("/accounts/<int:account_id>/reconciliation/<int:run_id>.csv")
@login_required
def reconciliation_csv(account_id: int, run_id: int) -> ResponseReturnValue:
    account = acl.account_for(current_access(), account_id, acl.FINANCE)
    run = reconciliation.run_for(account.id, run_id) or abort(404)
    name = f"reconciliation-{account.appid}-{run.provider.value}-{run.bill_date.isoformat()}.csv"
    return Response(
        "\ufeff" + reconciliation.items_csv(run),  # a BOM so spreadsheet programs read UTF-8
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@bp.route("/accounts/<int:account_id>/fund-pools", methods=["GET", "POST"])
@login_required
def pool_list(account_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.FINANCE)
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        form = request.form
        try:
            try:
                warning, critical = (
                    yuan_to_fen(form.get("warning", "")),
                    yuan_to_fen(form.get("critical", "")),
                )
            except ValueError:
                raise acl.InvalidInputError(
                    "thresholds are amounts in yuan", fields={"warning": ["invalid"], "critical": ["invalid"]}
                ) from None
            pool = operations.create_pool(
                access,
                account.id,
                {
                    "name": form.get("name", ""),
                    "warning_fen": warning,
                    "critical_fen": critical,
                    "alert_openids": (form.get("alert_openids") or "").split(),
                    "alert_template_id": form.get("alert_template_id") or None,
                },
                client_ip(),
            )
            db.session.commit()
        except ServiceError as exc:
            errors = _fail(exc)
        else:
            flash(f"Fund pool {pool.name} created.", "success")
            return redirect(url_for("payments_console.pool_detail", account_id=account.id, pool_id=pool.id))
    return render_template(
        "payments/console_fund_pools.html",
        account=account,
        pools=funds.pools(account.id),
        level_of=funds.level_of,
        form=request.form,
        errors=errors,
        yuan=fen_to_yuan,
    )


@bp.route("/accounts/<int:account_id>/fund-pools/<int:pool_id>", methods=["GET", "POST"])
@login_required
def pool_detail(account_id: int, pool_id: int) -> ResponseReturnValue:
    access = current_access()
    account = acl.account_for(access, account_id, acl.FINANCE)
    pool = funds.pool_for(account.id, pool_id)
    if request.method == "POST":
        form = request.form
        try:
            try:
                amount = yuan_to_fen(form.get("amount", ""))
            except ValueError:
                raise acl.InvalidInputError("an amount in yuan", fields={"amount": ["invalid"]}) from None
            operations.top_up(
                access, account.id, pool.id, amount, form.get("ref", ""), form.get("note", ""), client_ip()
            )
            db.session.commit()
        except ServiceError as exc:
            _fail(exc)
        else:
            flash("Top-up recorded.", "success")
        return redirect(url_for("payments_console.pool_detail", account_id=account.id, pool_id=pool.id))
    return render_template(
        "payments/console_fund_pool.html",
        account=account,
        pool=pool,
        # What draws on the pool is told by the domains above (the store's products).
        sections=[html for _, html in pool_page.send("payments", account=account, pool=pool) if html],
        entries=funds.entries(pool.id),
        level=funds.level_of(pool, pool.balance_fen).name,
        yuan=fen_to_yuan,
    )
