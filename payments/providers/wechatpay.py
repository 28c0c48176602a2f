"""What WeChat Pay's two APIs (v3 and v2) do alike behind the provider interface: closing a trade,
asking for a refund and asking where one stands, in v3's words. Each API's client supplies
``close``, ``refund`` and ``refund_status``."""

from __future__ import annotations

from typing import Any, Literal

from payments.providers.base import NOT_FOUND, PaymentProviderError, RefundState


class WeChatPayRefunds:
    """Mixed into WeChatPayV3 and WeChatPayV2."""

    def close(self, out_trade_no: str) -> None:
        raise NotImplementedError

    def refund(
        self, *, out_trade_no: str, out_refund_no: str, refund_fen: int, total_fen: int, reason: str
    ) -> dict[str, Any]:
        raise NotImplementedError

    def refund_status(self, out_refund_no: str) -> dict[str, Any]:
        raise NotImplementedError

    def close_trade(self, out_trade_no: str) -> Literal["closed", "paid"]:
        try:
            self.close(out_trade_no)
        except PaymentProviderError as exc:
            if exc.code == "ORDERPAID":
                return "paid"
            if exc.code not in ("ORDER_NOT_EXIST", "ORDERCLOSED"):
                raise
        return "closed"

    def refund_money(
        self, *, out_trade_no: str, out_refund_no: str, amount_fen: int, total_fen: int, reason: str
    ) -> RefundState:
        raw = self.refund(
            out_trade_no=out_trade_no,
            out_refund_no=out_refund_no,
            refund_fen=amount_fen,
            total_fen=total_fen,
            reason=reason,
        )
        return RefundState(str(raw.get("status")), str(raw.get("refund_id") or ""), amount_fen, dict(raw))

    def refund_state(self, *, out_trade_no: str, out_refund_no: str) -> RefundState | None:
        try:
            answer = self.refund_status(out_refund_no)
        except PaymentProviderError as exc:
            if exc.code in NOT_FOUND:
                return None  # the request never reached the provider: ask again
            raise
        return RefundState(answer["status"], str(answer.get("refund_id") or ""), answer.get("amount"), answer)
