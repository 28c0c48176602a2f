"""Payments: merchant configuration, providers (WeChat Pay API v3 so far), notifications,
refunds. Every payment or refund state change is a new row; the provider's ids are unique."""
