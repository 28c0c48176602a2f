"""Any table as CSV (UTF-8 with a BOM, so spreadsheet programs read Chinese) or XLSX (openpyxl)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from flask import Response

FORMATS = ("csv", "xlsx")


def table_response(name: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> Response:
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:80]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(headers)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
        return Response(
            "\ufeff" + buf.getvalue(),
            content_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{safe}.csv"'},
        )
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.title = safe[:31] or "table"
    sheet.append(list(headers))
    for row in rows:
        # Ratios and scores as text keep their exact digits; integers (counts, fen) stay numbers.
        sheet.append([str(v) if isinstance(v, Decimal) else v for v in row])
    out = io.BytesIO()
    book.save(out)
    return Response(
        out.getvalue(),
        content_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        headers={"Content-Disposition": f'attachment; filename="{safe}.xlsx"'},
    )
