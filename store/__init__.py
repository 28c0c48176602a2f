"""The WeChat store: the BOSS gateway, phone binding and inquiry (so far), then catalogue,
orders, fulfilment and redemption."""
