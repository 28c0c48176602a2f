"""Custom menus: a tree validated against WeChat's limits, then published with menu/create."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from accounts.models import Menu
from accounts.services import api_client, bump_config
from wechat_service.dbtypes import utcnow
from wechat_service.errors import InvalidInputError, NotFoundError
from wechat_service.extensions import db

MAX_TOP, MAX_SUB = 3, 5
TOP_NAME_BYTES, SUB_NAME_BYTES = 16, 60
KEY_BYTES, URL_BYTES = 128, 1024
TYPES = {"click", "view", "miniprogram"}


def validate_menu(tree: Any) -> dict[str, Any]:
    """Return a clean copy of the tree or raise with a field path per problem."""
    errors: dict[str, list[str]] = {}
    if not isinstance(tree, dict) or not isinstance(tree.get("button"), list):
        raise InvalidInputError("a menu is {'button': [...]}", fields={"button": ["required"]})
    buttons = tree["button"]
    if not 1 <= len(buttons) <= MAX_TOP:
        errors["button"] = [f"1 to {MAX_TOP} top-level buttons"]
    clean: list[dict[str, Any]] = []
    for i, button in enumerate(buttons[:MAX_TOP]):
        path = f"button[{i}]"
        if not isinstance(button, dict):
            errors[path] = ["must be an object"]
            continue
        subs = button.get("sub_button")
        if subs:
            if not isinstance(subs, list) or len(subs) > MAX_SUB:
                errors[f"{path}.sub_button"] = [f"at most {MAX_SUB} sub-buttons"]
                continue
            name = _name(button, path, TOP_NAME_BYTES, errors)
            children = [
                _leaf(s, f"{path}.sub_button[{j}]", SUB_NAME_BYTES, errors) for j, s in enumerate(subs)
            ]
            clean.append({"name": name, "sub_button": children})
        else:
            clean.append(_leaf(button, path, TOP_NAME_BYTES, errors))
    if errors:
        raise InvalidInputError("the menu breaks WeChat's limits", fields=errors)
    return {"button": clean}


def _name(button: dict[str, Any], path: str, limit: int, errors: dict[str, list[str]]) -> str:
    name = str(button.get("name") or "")
    if not name:
        errors[f"{path}.name"] = ["required"]
    elif len(name.encode()) > limit:
        errors[f"{path}.name"] = [f"at most {limit} bytes"]
    return name


def _leaf(button: Any, path: str, limit: int, errors: dict[str, list[str]]) -> dict[str, Any]:
    if not isinstance(button, dict):
        errors[path] = ["must be an object"]
        return {}
    out: dict[str, Any] = {"name": _name(button, path, limit, errors), "type": button.get("type")}
    kind = button.get("type")
    if not isinstance(kind, str) or kind not in TYPES:
        errors[f"{path}.type"] = [f"one of {sorted(TYPES)}"]
        return out
    if kind == "click":
        key = str(button.get("key") or "")
        if not key or len(key.encode()) > KEY_BYTES:
            errors[f"{path}.key"] = [f"required, at most {KEY_BYTES} bytes"]
        out["key"] = key
    if kind in ("view", "miniprogram"):
        url = str(button.get("url") or "")
        if not url.startswith(("http://", "https://")) or len(url.encode()) > URL_BYTES:
            errors[f"{path}.url"] = [f"an http(s) URL of at most {URL_BYTES} bytes"]
        out["url"] = url
    if kind == "miniprogram":
        for field in ("appid", "pagepath"):
            if not button.get(field):
                errors[f"{path}.{field}"] = ["required"]
            out[field] = str(button.get(field) or "")
    return out


def save_menu(account_id: int, tree: Any) -> Menu:
    clean = validate_menu(tree)
    menu = db.session.scalar(sa.select(Menu).where(Menu.account_id == account_id))
    if menu is None:
        menu = Menu(account_id=account_id, tree=clean)
        db.session.add(menu)
    else:
        menu.tree = clean
    bump_config(account_id)
    db.session.flush()
    return menu


def get_menu(account_id: int) -> Menu | None:
    return db.session.scalar(sa.select(Menu).where(Menu.account_id == account_id))


def publish_menu(account_id: int) -> Menu:
    """Send the saved tree to WeChat (menu/create); record what was published and when."""
    menu = get_menu(account_id)
    if menu is None:
        raise NotFoundError("this account has no saved menu")
    api_client(account_id).menu.create(menu.tree)
    menu.published_tree = menu.tree
    menu.published_at = utcnow()
    db.session.flush()
    return menu


def tree_from_rows(rows: list[dict[str, str]]) -> dict[str, Any]:
    """The console's fixed grid (3 top buttons × 5 sub-buttons) to a menu tree; blank rows dropped.

    Row keys: top (0-2), sub ('' for the top button itself, else 0-4), name, type, value (key or
    url), appid, pagepath.
    """
    tops: dict[int, dict[str, Any]] = {}
    for row in rows:
        if not (row.get("name") or "").strip():
            continue
        try:
            top = int(row["top"])
            sub = row.get("sub", "")
            sub_ok = sub == "" or 0 <= int(sub) < MAX_SUB
        except (TypeError, ValueError):
            top, sub_ok = -1, False
        if not 0 <= top < MAX_TOP or not sub_ok:
            raise InvalidInputError("the menu grid was tampered with", fields={"grid": ["invalid slot"]})
        leaf: dict[str, Any] = {"name": row["name"].strip(), "type": row.get("type") or "click"}
        if leaf["type"] == "click":
            leaf["key"] = (row.get("value") or "").strip()
        else:
            leaf["url"] = (row.get("value") or "").strip()
        if leaf["type"] == "miniprogram":
            leaf["appid"], leaf["pagepath"] = (
                (row.get("appid") or "").strip(),
                (row.get("pagepath") or "").strip(),
            )
        if row.get("sub", "") == "":
            tops.setdefault(top, {}).update(leaf)
        else:
            tops.setdefault(top, {}).setdefault("sub_button", []).append(leaf)
    buttons = []
    for top in sorted(tops):
        button = tops[top]
        if button.get("sub_button"):
            button = {"name": button.get("name", ""), "sub_button": button["sub_button"]}
        buttons.append(button)
    return {"button": buttons}


def rows_from_tree(tree: dict[str, Any] | None) -> list[dict[str, str]]:
    """The grid the editor shows for a saved tree (every slot present, blank where unused)."""
    buttons = (tree or {}).get("button") or []
    rows = []
    for top in range(MAX_TOP):
        button = buttons[top] if top < len(buttons) else {}
        rows.append(_row(top, "", button))
        subs = button.get("sub_button") or []
        for sub in range(MAX_SUB):
            rows.append(_row(top, str(sub), subs[sub] if sub < len(subs) else {}))
    return rows


def _row(top: int, sub: str, button: dict[str, Any]) -> dict[str, str]:
    return {
        "top": str(top),
        "sub": sub,
        "name": button.get("name", ""),
        "type": button.get("type", ""),
        "value": button.get("key") or button.get("url") or "",
        "appid": button.get("appid", ""),
        "pagepath": button.get("pagepath", ""),
    }
