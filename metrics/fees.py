"""Fee formulas of a contract: pure functions on Decimal ratios and integer fen, so every figure
can be checked by hand. Rounding: ratios to 4 places, money to the fen, both half-up; the fixed
and variable amounts of the periods add up to exactly the contract's (the last period takes the
remainder)."""

from __future__ import annotations

from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any

from wechat_service.errors import InvalidInputError
from wechat_service.money import yuan

RATIO = Decimal("0.0001")
ONE = Decimal(1)


def ratio(value: Decimal) -> Decimal:
    return value.quantize(RATIO, ROUND_HALF_UP)


def plain(value: Decimal | int | str) -> str:
    """A number as people write it: 60 → '60', 0.9250 → '0.925', never '6E+1' (Decimal's
    ``normalize()`` and ``str()`` switch to exponent notation)."""
    text = format(Decimal(value).normalize(), "f")
    return "0" if text in ("-0", "") else text


def fen(value: Decimal) -> int:
    return int(value.quantize(ONE, ROUND_HALF_UP))


def split_fen(total: int, parts: int) -> list[int]:
    """``total`` fen in ``parts`` equal instalments; the last takes the remainder."""
    base = int((Decimal(total) / parts).to_integral_value(ROUND_FLOOR))
    return [base] * (parts - 1) + [total - base * (parts - 1)]


def validate_params(formula: str, params: dict[str, Any]) -> dict[str, Any]:
    """Normalise a formula's parameters (Decimal strings), or raise InvalidInputError."""
    try:
        if formula == "linear":
            return {}
        if formula == "floor":
            floor = Decimal(str(params["floor"]))
            if not Decimal(0) <= floor <= ONE:
                raise ValueError
            return {"floor": str(floor)}
        if formula == "tiered":
            tiers = [
                {"min": str(Decimal(str(t["min"]))), "pay": str(Decimal(str(t["pay"])))}
                for t in params["tiers"]
            ]
            if not tiers or any(not Decimal(0) <= Decimal(t["pay"]) <= ONE for t in tiers):
                raise ValueError
            return {"tiers": sorted(tiers, key=lambda t: Decimal(t["min"]), reverse=True)}
    except (KeyError, TypeError, ValueError, ArithmeticError):
        pass
    raise InvalidInputError(
        "formula parameters: floor needs {'floor': '0.6'}; "
        "tiered needs {'tiers': [{'min': '1.0', 'pay': '1.0'}, …]}",
        fields={"formula_params": ["invalid"]},
    )


def payout(formula: str, params: dict[str, Any], attainment: Decimal) -> tuple[Decimal, str]:
    """The share of the variable amount paid for a weighted attainment, and why."""
    if formula == "linear":
        paid = min(attainment, ONE)
        return ratio(paid), f"linear: min({attainment}, 1) = {ratio(paid)}"
    if formula == "floor":
        floor = Decimal(params["floor"])
        if attainment < floor:
            return Decimal("0.0000"), f"floor: {attainment} < floor {floor} → 0"
        paid = min(attainment, ONE)
        return ratio(paid), f"floor: {attainment} ≥ floor {floor} → min({attainment}, 1) = {ratio(paid)}"
    if formula == "tiered":
        for tier in params["tiers"]:  # highest threshold first
            if attainment >= Decimal(tier["min"]):
                return ratio(Decimal(tier["pay"])), f"tiered: {attainment} ≥ {tier['min']} → {tier['pay']}"
        return Decimal("0.0000"), f"tiered: {attainment} below every threshold → 0"
    raise InvalidInputError(f"unknown fee formula {formula}")


def weighted_attainment(items: list[tuple[Decimal, Decimal]]) -> Decimal:
    """Σ weight × attainment / Σ weight over (attainment, weight) pairs; no targets → 0."""
    total_weight = sum((w for _, w in items), start=Decimal(0))
    if total_weight == 0:
        return Decimal("0.0000")
    return ratio(sum((a * w for a, w in items), start=Decimal(0)) / total_weight)


def period_fee(
    *,
    price_fen: int,
    fixed_share: Decimal,
    periods: int,
    seq: int,
    formula: str,
    params: dict[str, Any],
    attainment: Decimal,
) -> dict[str, Any]:
    """The fee of payment period ``seq`` (1-based) of ``periods``, line by line."""
    fixed, variable_max, lines = _instalment(price_fen, fixed_share, periods, seq)
    share, why = payout(formula, params, attainment)
    variable = fen(Decimal(variable_max) * share)
    lines += [
        {
            "item": "weighted attainment",
            "formula": "Σ weight × attainment / Σ weight",
            "ratio": str(attainment),
        },
        {"item": "payout share", "formula": why, "ratio": str(share)},
        {"item": "variable earned", "formula": f"{yuan(variable_max)} × {share}", "fen": variable},
        {
            "item": "fee for the period",
            "formula": f"{yuan(fixed)} + {yuan(variable)}",
            "fen": fixed + variable,
        },
    ]
    return {
        "fixed_fen": fixed,
        "variable_max_fen": variable_max,
        "payout_share": str(share),
        "variable_fen": variable,
        "fee_fen": fixed + variable,
        "lines": lines,
    }


def _instalment(
    price_fen: int, fixed_share: Decimal, periods: int, seq: int
) -> tuple[int, int, list[dict[str, Any]]]:
    """Period ``seq``'s fixed instalment and the variable amount at stake, with the derivation's
    lines from the contract price."""
    fixed_total = fen(Decimal(price_fen) * fixed_share)
    variable_total = price_fen - fixed_total
    fixed = split_fen(fixed_total, periods)[seq - 1]
    variable_max = split_fen(variable_total, periods)[seq - 1]
    # Every amount in the derivation is in 元 (the page's column), from integer fen.
    lines: list[dict[str, Any]] = [
        {"item": "contract price", "formula": "", "fen": price_fen},
        {
            "item": "fixed part of the contract",
            "formula": f"{yuan(price_fen)} × {plain(fixed_share)}",
            "fen": fixed_total,
        },
        {
            "item": "variable part of the contract",
            "formula": f"{yuan(price_fen)} − {yuan(fixed_total)}",
            "fen": variable_total,
        },
        {
            "item": f"fixed instalment {seq}/{periods}",
            "formula": f"{yuan(fixed_total)} / {periods}",
            "fen": fixed,
        },
        {
            "item": f"variable at stake {seq}/{periods}",
            "formula": f"{yuan(variable_total)} / {periods}",
            "fen": variable_max,
        },
    ]
    return fixed, variable_max, lines
