"""The offline stand-in for WeChat (and, as the store lands, WeChat Pay, Alipay and the BOSS).

One Flask app on one port; each outside system under its own path prefix (``/wechat`` here), so
each base-URL setting of the service points at one prefix. ``/_sim/`` is the admin API used by
tests, the demo and benchmarks (see docs/simulator.md).
"""
