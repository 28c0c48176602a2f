"""Error codes are enum members (issue 11, "Error codes become enums").

A ``ServiceError``'s machine code is a member of a ``StrEnum``: ``wechat_service.errors.ErrorCode``
for the generic and shared codes, and each domain's own ``…ErrorCode`` in its ``errors`` module.
These tests read the product packages with ``ast`` and fail on a string literal given as a code
(a ``code=`` argument to ``ServiceError`` or a subclass, or a ``code =`` class attribute of one),
and check the enums: members are snake_case strings equal to their names, and each value is
defined once across all of them (in the lowest package that needs it), so one string means one thing.
"""

from __future__ import annotations

import ast
import enum
import importlib
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask, jsonify

from tests.ladder import LADDER
from wechat_service.errors import ErrorCode, ServiceError, error_body

ROOT = Path(__file__).resolve().parents[2]  # tests/wechat_service/ → the repository
PACKAGES = [pkg for rung in LADDER for pkg in rung if (ROOT / pkg / "__init__.py").exists()]

LITERAL_CODES_ALLOWED_IN: frozenset[str] = frozenset()  # none: every code is a member

SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def _product_files() -> Iterator[tuple[str, ast.Module]]:
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), str(path))


def _name(node: ast.expr) -> str | None:
    """``X`` or ``module.X`` → ``X``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _service_error_classes(trees: list[tuple[str, ast.Module]]) -> set[str]:
    """ServiceError and the names of its subclasses, through every level, across the packages."""
    bases = {
        node.name: {_name(base) for base in node.bases}
        for _, tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
    }
    found = {"ServiceError"}
    while True:
        more = {name for name, parents in bases.items() if parents & found} - found
        if not more:
            return found
        found |= more


def _literals(value: ast.expr | None) -> Iterator[ast.expr]:
    """The string literals a code expression can evaluate to (``"x"``, ``f"x_{y}"``, either branch
    of ``a if c else b`` or of ``a or b``)."""
    if isinstance(value, ast.Constant) and isinstance(value.value, str) or isinstance(value, ast.JoinedStr):
        yield value
    elif isinstance(value, ast.IfExp):
        yield from _literals(value.body)
        yield from _literals(value.orelse)
    elif isinstance(value, ast.BoolOp):
        for part in value.values:
            yield from _literals(part)


def literal_codes(trees: list[tuple[str, ast.Module]]) -> list[str]:
    """``file:line: code`` for each string literal given as a ServiceError's code."""
    classes = _service_error_classes(trees)
    found = []
    for file, tree in trees:
        for node in ast.walk(tree):
            values: list[ast.expr | None] = []
            if isinstance(node, ast.ClassDef) and node.name in classes:
                for stmt in node.body:
                    if isinstance(stmt, ast.Assign | ast.AnnAssign):
                        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                        if any(isinstance(t, ast.Name) and t.id == "code" for t in targets):
                            values.append(stmt.value)
            elif isinstance(node, ast.Call) and _name(node.func) in classes:
                values += [kw.value for kw in node.keywords if kw.arg == "code"]
            for value in values:
                found += [f"{file}:{lit.lineno}: {ast.unparse(lit)}" for lit in _literals(value)]
    return found


def test_codes_are_enum_members_not_string_literals() -> None:
    trees = list(_product_files())
    found = [where for where in literal_codes(trees) if where.split(":")[0] not in LITERAL_CODES_ALLOWED_IN]
    assert not found, (
        "use a member of ErrorCode or the domain's …ErrorCode (its errors module):\n" + "\n".join(found)
    )


def test_the_checker_finds_literal_codes() -> None:
    source = textwrap.dedent(
        """
        class Mine(errors.ServiceError):
            code = "mine"

        class Deeper(Mine):
            code: StrEnum = "deeper"

        class Fine(ServiceError):
            code = ErrorCode.conflict

        raise ServiceError("m", code="a")
        raise Deeper("m", code=f"b_{x}")
        raise Mine("m", code=E.c if x == "no" else "d")
        raise Fine("m", code=ErrorCode.conflict)
        redirect("/", code=302)
        add_product(code="not-an-error")
        """
    )
    found = [where.split(": ", 1)[1] for where in literal_codes([("x.py", ast.parse(source))])]
    assert sorted(found) == sorted(["'mine'", "'deeper'", "'a'", "f'b_{x}'", "'d'"])


def error_code_enums() -> list[type[enum.StrEnum]]:
    """Every StrEnum defined in a product package's ``errors`` module."""
    found: list[type[enum.StrEnum]] = []
    for pkg in PACKAGES:
        if not (ROOT / pkg / "errors.py").exists():
            continue
        module = importlib.import_module(f"{pkg}.errors")
        found += [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type)
            and issubclass(obj, enum.StrEnum)
            and obj is not enum.StrEnum
            and obj.__module__ == module.__name__
        ]
    return found


def test_the_enums_are_found() -> None:
    names = {e.__name__ for e in error_code_enums()}
    assert {
        "ErrorCode",
        "AccountErrorCode",
        "PaymentErrorCode",
        "StoreErrorCode",
        "TemplateMsgErrorCode",
    } <= names


@pytest.mark.parametrize("codes", error_code_enums(), ids=lambda e: e.__name__)
def test_members_are_snake_case_and_equal_to_their_names(codes: type[enum.StrEnum]) -> None:
    assert [name for name in codes.__members__ if not SNAKE_CASE.match(name)] == []
    assert [(m.name, m.value) for m in codes if m.value != m.name] == []
    aliases = [name for name, member in codes.__members__.items() if member.name != name]
    assert aliases == [], f"{codes.__name__}: values defined twice"


def test_each_value_is_defined_once_across_the_enums() -> None:
    """A code shared by several domains lives in the lowest package that needs it (ErrorCode for
    the base and codes two domains raise), never twice with possibly different meanings."""
    owners: dict[str, list[str]] = {}
    for codes in error_code_enums():
        for member in codes:
            owners.setdefault(member.value, []).append(codes.__name__)
    assert {value: names for value, names in owners.items() if len(names) > 1} == {}


def test_members_serialise_as_their_values(app: Flask) -> None:
    """The JSON body and comparisons with plain strings are what they were before the enums."""
    exc = ServiceError("gone", code=ErrorCode.not_found, status=404)
    with app.test_request_context():
        body = jsonify(error_body(exc.code, exc.message)).get_data(as_text=True)
    assert '"code":"not_found"' in body.replace(" ", "")
    assert exc.code == "not_found" and f"{exc.code}" == "not_found" and str(exc.code) == "not_found"
    assert {"not_found": 1}.get(exc.code) == 1
