"""The WeChat store: the BOSS gateway, phone binding, inquiry, catalogue, orders, fulfilment,
redemption (codes, coupons, points); its H5 pages, mini-program API and console pages."""

from __future__ import annotations

from flask import Flask

from accounts.timeline import contribute
from payments.signals import pool_page
from wechat_service.extensions import csrf
from wechat_service.periodic import declare
from wechat_service.rotation import rekey_with


def init_app(app: Flask) -> None:
    """Models, callback handlers, H5 pages, mini-program API, console pages, periodic jobs."""
    # Its own modules (handlers register, models add their tables): they import this package, so
    # they load here, once the app is being built.
    from store import api, console, h5, handlers, jobs, models, mp, services  # noqa: F401

    app.register_blueprint(h5.bp)  # H5 store pages: CSRF stays on for their forms
    app.register_blueprint(console.bp)
    pool_page.connect(console.pool_products_section)  # the products section of a fund pool's page
    handlers.connect_payment_events()  # orders move with their payment intents, in one transaction
    contribute(app, "store", handlers.timeline_entries)  # orders, inquiries, the bound phone
    csrf.exempt(mp.bp)  # the mini-program API is authenticated by its session token
    app.extensions["openapi"].register_blueprint(mp.bp)
    app.extensions["openapi"].register_blueprint(api.blp)  # staff: orders and refunds
    # Phone look-up hashes are keyed by the first master key: redone by `secrets rotate`.
    rekey_with(app, "phone look-up hashes", services.rehash_phones)
    declare(app, jobs.sweep_fulfilments, "default", interval=300)
    declare(app, jobs.sweep_orders, "default", interval=60)
    declare(app, jobs.sweep_points_holds, "default", interval=300)
