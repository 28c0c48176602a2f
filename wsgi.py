"""WSGI entry point: ``gunicorn wsgi:app``."""

from wechat_service.app import create_app

app = create_app()
