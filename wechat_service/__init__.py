"""The service shell: app factory, configuration, callback gateway, WeChat API gateway."""
