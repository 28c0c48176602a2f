"""Who may do what on which account. Every account-owned console query goes through here.

Grants bind a user to an account or to an org unit (and so to every account under it). A role
is a set of permissions; admins have every permission on every account.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from accounts.models import Account, Grant, OrgUnit, Role, StaffUser
from wechat_service.errors import ForbiddenError, InvalidInputError, NotFoundError  # noqa: F401 - re-exported
from wechat_service.extensions import db

VIEW = "account.view"
EDIT = "account.edit"
REPLIES = "replies.edit"
MENUS = "menus.edit"
QRCODES = "qrcodes.edit"
SUBSCRIBERS = "subscribers.view"
REVEAL = "subscribers.reveal"
METRICS = "metrics.view"
CAMPAIGN_PREPARE = "campaigns.prepare"
CAMPAIGN_APPROVE = "campaigns.approve"
ORDERS = "orders.view"
REFUND = "orders.refund"
STORE = "store.manage"  # catalogue, redeem-code batches (and their one-time export), coupons
FINANCE = "payments.finance"  # reconciliation reports, fund pools and their thresholds
STAFF = "staff.manage"
AUDIT = "audit.view"

ROLE_PERMISSIONS: dict[Role, frozenset[str]] = {
    Role.account_manager: frozenset(
        {VIEW, EDIT, REPLIES, MENUS, QRCODES, SUBSCRIBERS, METRICS, ORDERS, REFUND, STORE, FINANCE}
    ),
    Role.marketer: frozenset({VIEW, METRICS, CAMPAIGN_PREPARE}),
    Role.analyst: frozenset({VIEW, METRICS}),
    Role.support: frozenset({VIEW, SUBSCRIBERS, REVEAL, ORDERS}),
}
ALL_PERMISSIONS = frozenset().union(*ROLE_PERMISSIONS.values(), {CAMPAIGN_APPROVE, STAFF, AUDIT})
# Who sees personal data unmasked without an explicit, audited reveal.
UNMASKED = "subscribers.unmasked"


@dataclass(frozen=True)
class Access:
    """A user's permissions per account id, computed once per request."""

    user_id: int
    is_admin: bool
    per_account: dict[int, frozenset[str]]

    def can(self, permission: str, account_id: int) -> bool:
        if self.is_admin:
            return True
        return permission in self.per_account.get(account_id, frozenset())

    def visible(self, account_id: int) -> bool:
        return self.is_admin or account_id in self.per_account

    def account_ids(self, permission: str = VIEW) -> list[int] | None:
        """Ids the user holds ``permission`` on; None means every account (admins)."""
        if self.is_admin:
            return None
        return sorted(a for a, perms in self.per_account.items() if permission in perms)

    def any(self, permission: str) -> bool:
        return self.is_admin or any(permission in p for p in self.per_account.values())

    def unmasked(self, account_id: int) -> bool:
        return self.is_admin


def access_for(user: StaffUser) -> Access:
    if user.is_admin:
        return Access(user.id, True, {})
    grants = db.session.scalars(sa.select(Grant).where(Grant.user_id == user.id)).all()
    per: dict[int, set[str]] = {}
    if grants:
        units = db.session.execute(sa.select(OrgUnit.id, OrgUnit.parent_id)).all()
        children: dict[int | None, list[int]] = {}
        for uid, parent in units:
            children.setdefault(parent, []).append(uid)
        accounts_by_unit: dict[int | None, list[int]] = {}
        for aid, unit in db.session.execute(sa.select(Account.id, Account.org_unit_id)).all():
            accounts_by_unit.setdefault(unit, []).append(aid)
        for grant in grants:
            perms = set(ROLE_PERMISSIONS[grant.role])
            if grant.can_approve:
                perms.add(CAMPAIGN_APPROVE)
            if grant.account_id is not None:
                targets = [grant.account_id]
            else:
                targets, stack = [], [grant.org_unit_id]
                while stack:
                    unit_id = stack.pop()
                    targets.extend(accounts_by_unit.get(unit_id, []))
                    stack.extend(children.get(unit_id, []))
            for aid in targets:
                per.setdefault(aid, set()).update(perms)
    return Access(user.id, False, {a: frozenset(p) for a, p in per.items()})


def scoped_accounts(access: Access, permission: str = VIEW) -> sa.Select[Any]:
    """The accounts query every console list starts from."""
    query = sa.select(Account).order_by(Account.id)
    ids = access.account_ids(permission)
    if ids is not None:
        query = query.where(Account.id.in_(ids))
    return query


def account_for(access: Access, account_id: int, permission: str = VIEW) -> Account:
    """The account if the user holds ``permission`` on it: 404 when they cannot see it at all
    (nothing is revealed about its existence), 403 when they see it but lack the permission."""
    if not access.visible(account_id):
        raise NotFoundError("no such account")
    account = db.session.get(Account, account_id)
    if account is None:
        raise NotFoundError("no such account")
    if not access.can(permission, account_id):
        raise ForbiddenError("your role does not allow this on this account")
    return account


def require(access: Access, permission: str) -> None:
    """Matrix-wide permissions (staff, audit): admins only."""
    if not access.is_admin and permission in (STAFF, AUDIT):
        raise ForbiddenError("administrators only")
    if not access.any(permission):
        raise ForbiddenError("your role does not allow this")
