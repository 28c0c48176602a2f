"""Any table as CSV or XLSX: the base's one export writer (formula-safe), under its old name."""

from __future__ import annotations

from wechat_service.exports import FORMATS, table_response

__all__ = ["FORMATS", "table_response"]
