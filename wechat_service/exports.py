"""Every CSV and XLSX the service hands out is written here, so no cell can run as a spreadsheet
formula: a text cell starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return (a product
name ``=HYPERLINK(…)``, a remark ``@SUM(1)``) gets a leading ``'``. Numbers stay numbers: only
text is neutralised, so pass amounts and counts as int, never as pre-formatted strings."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from flask import Response

FORMATS = ("csv", "xlsx")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CSV_TYPE = "text/csv; charset=utf-8"
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
BOM = "\ufeff"  # so spreadsheet programs read UTF-8 (Chinese)


def safe_cell(value: Any) -> Any:
    """The value as a spreadsheet must receive it: text that could start a formula quoted."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def safe_row(row: Iterable[Any]) -> list[Any]:
    return [safe_cell(v) for v in row]


class SafeWriter:
    """``csv.writer`` whose rows go through :func:`safe_cell`; None is written as an empty cell."""

    def __init__(self, out: Any) -> None:
        self._writer = csv.writer(out)

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._writer.writerow(["" if v is None else safe_cell(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def csv_writer(out: Any) -> SafeWriter:
    return SafeWriter(out)


def csv_text(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = SafeWriter(out)
    writer.writerow(headers)
    writer.writerows(rows)
    return out.getvalue()


def _filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:120]


def csv_response(filename: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> Response:
    return Response(
        BOM + csv_text(headers, rows),
        content_type=CSV_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{_filename(filename)}"'},
    )


def table_response(name: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> Response:
    """Any table as CSV (with a BOM) or XLSX (openpyxl)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:80]
    if fmt == "csv":
        return csv_response(f"{safe}.csv", headers, rows)
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    assert sheet is not None  # a new Workbook starts with one sheet, active
    sheet.title = safe[:31] or "table"
    sheet.append(safe_row(headers))
    for row in rows:
        # Ratios and scores as text keep their exact digits (a number's text, never a formula);
        # integers (counts, fen) stay numbers. openpyxl would store a text starting with "=" as
        # a formula: safe_cell quotes it.
        sheet.append([str(v) if isinstance(v, Decimal) else safe_cell(v) for v in row])
    out = io.BytesIO()
    book.save(out)
    return Response(
        out.getvalue(),
        content_type=XLSX_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{safe}.xlsx"'},
    )
