"""The web front end (WFE): parse, bound, route, render errors. No CA rules live here."""

from appliance.api.app import create_app, create_http_app

__all__ = ["create_app", "create_http_app"]
