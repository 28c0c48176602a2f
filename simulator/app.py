"""The simulator app: ``gunicorn 'simulator.app:create_app()'`` (one process: state is in memory)."""

from __future__ import annotations

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from simulator import admin, alipay, bills, boss, datacube, oauth, wechat, wechatpay, wechatpay_v2
from simulator.state import SimState


def create_app() -> Flask:
    app = Flask("simulator")
    app.extensions["sim_state"] = SimState()
    app.register_blueprint(wechat.bp)
    app.register_blueprint(datacube.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(boss.bp)
    app.register_blueprint(boss.admin)
    app.register_blueprint(wechatpay.bp)
    app.register_blueprint(wechatpay.admin)
    app.register_blueprint(alipay.bp)
    app.register_blueprint(alipay.admin)
    app.register_blueprint(wechatpay_v2.bp)
    app.register_blueprint(wechatpay_v2.admin)
    app.register_blueprint(bills.admin)
    app.register_blueprint(oauth.open_bp)
    app.register_blueprint(oauth.bp)
    app.register_blueprint(oauth.admin)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        return jsonify(
            {"error": {"code": exc.name.lower().replace(" ", "_"), "message": exc.description}}
        ), exc.code

    @app.get("/_sim/health")
    def health():  # type: ignore[no-untyped-def]
        return jsonify({"status": "ok"})

    return app
