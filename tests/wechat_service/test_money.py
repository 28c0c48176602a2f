"""Yuan text and integer fen, both ways, exactly."""

from __future__ import annotations

import pytest

from wechat_service.money import fen_of, yuan


@pytest.mark.parametrize(
    ("fen", "text", "short"),
    [
        (1990, "19.90", "19.90"),
        (3000, "30.00", "30"),
        (5, "0.05", "0.05"),
        (0, "0.00", "0"),
        (-150, "-1.50", "-1.50"),
    ],
)
def test_yuan(fen: int, text: str, short: str) -> None:
    assert yuan(fen) == text and yuan(fen, short=True) == short


@pytest.mark.parametrize(("text", "fen"), [("19.9", 1990), ("0.1", 10), ("100", 10000), (" 0.01 ", 1)])
def test_fen_of(text: str, fen: int) -> None:
    assert fen_of(text) == fen


@pytest.mark.parametrize("bad", ["1.234", "NaN", "Infinity", "abc", ""])
def test_fen_of_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        fen_of(bad)
