"""Sign in at an OpenID provider for an OIDC provisioner: the authorization-code flow with PKCE (RFC 7636) on a
loopback redirect (RFC 8252), as the step CLI does, giving the ID token the CA accepts as a one-time token.

The URL to open is always printed (a machine without a browser, or over SSH: open it elsewhere, as long as the
browser can reach this machine's loopback listener, e.g. through `ssh -L`); a browser is started only where
there is a display or `$BROWSER` says which, so a terminal is never taken over by a text browser.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import secrets
import socket
import time
import webbrowser
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import requests

from appliance.client.http import ClientError
from appliance.config import loopback_host, split_address
from appliance.provisioners import jose
from appliance.provisioners.oidc_keys import (
    CONNECT_TIMEOUT,
    MAX_DOCUMENT,
    READ_TIMEOUT,
    ProviderError,
    discovery_url,
    fetch_json,
    parse_discovery,
)

LOGIN_TIMEOUT = 300.0  # seconds the user has to sign in


def _pkce() -> tuple[str, str]:
    """(verifier, S256 challenge)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class _Redirect(BaseHTTPRequestHandler):
    """Takes the provider's redirect: the code (for our state) or the provider's error."""

    server: _Listener
    timeout = 5  # a connection that sends nothing cannot hold the one-at-a-time listener

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        query = parse_qs(urlsplit(self.path).query)
        state = query.get("state", [""])[0]
        if not secrets.compare_digest(state, self.server.state):
            self._answer(400, "This is not the sign-in this client started.")
            return
        if "error" in query:
            text = " ".join(filter(None, (query["error"][0], query.get("error_description", [""])[0])))
            self.server.result = ("error", text[:500])
            self._answer(400, f"Sign-in failed: {text[:500]}")
        elif query.get("code", [""])[0]:
            self.server.result = ("code", query["code"][0])
            self._answer(200, "Signed in. You may close this window and return to the terminal.")
        else:
            self._answer(400, "The provider's redirect carries no code.")

    def _answer(self, status: int, text: str) -> None:
        body = f"<!doctype html><title>hsmca</title><p>{html.escape(text)}</p>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # the code is a credential: never logged
        return


class _Listener(HTTPServer):
    def __init__(self, address: tuple[str, int], state: str) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Redirect)
        self.state = state
        self.result: tuple[str, str] | None = None


def _listener(listen_address: str | None, state: str) -> _Listener:
    host, port = split_address(listen_address) if listen_address else ("127.0.0.1", 0)
    host = host or "127.0.0.1"
    if not loopback_host(host):
        raise ClientError(f"the provisioner's listenAddress {listen_address!r} is not a loopback address")
    try:
        return _Listener((host, port), state)
    except OSError as exc:
        raise ClientError(f"cannot listen on {host}:{port} for the provider's redirect: {exc.strerror}") from None


def _open_browser(url: str) -> None:
    if os.environ.get("BROWSER") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        try:
            webbrowser.open(url)
        except webbrowser.Error:
            pass


def sign_in(provisioner: dict[str, Any], *, echo: Callable[[str], None], timeout: float = LOGIN_TIMEOUT) -> str:
    """The ID token for this OIDC provisioner's client, after the user signs in; ClientError saying why not."""
    client_id = str(provisioner.get("clientID") or "")
    secret = str(provisioner.get("clientSecret") or "")
    endpoint = str(provisioner.get("configurationEndpoint") or "")
    if not client_id or not endpoint:
        raise ClientError(f"the CA lists provisioner {provisioner.get('name')!r} without clientID or "
                          "configurationEndpoint")
    url = discovery_url(endpoint)
    try:
        discovery = parse_discovery(fetch_json(url, "the discovery document")[0], url, provisioner.get("tenantID"))
    except ProviderError as exc:
        raise ClientError(str(exc)) from None

    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    verifier, challenge = _pkce()
    server = _listener(provisioner.get("listenAddress"), state)
    try:
        host, port = str(server.server_address[0]), int(server.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        redirect_uri = f"http://{shown}:{port}"
        scope = "openid email" + (" groups" if provisioner.get("groups") else "")
        auth_url = discovery.authorization_endpoint + ("&" if "?" in discovery.authorization_endpoint else "?") + \
            urlencode({"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
                       "scope": scope, "state": state, "nonce": nonce, "code_challenge": challenge,
                       "code_challenge_method": "S256"})
        echo(f"Sign in at your identity provider; open this URL in a browser:\n{auth_url}")
        _open_browser(auth_url)
        deadline = time.monotonic() + timeout
        while server.result is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClientError(f"no sign-in within {timeout:.0f} s")
            server.timeout = min(left, 1.0)
            server.handle_request()
    finally:
        server.server_close()
    kind, value = server.result
    if kind == "error":
        raise ClientError(f"the identity provider refused the sign-in: {value}")
    return _exchange(discovery.token_endpoint, client_id, secret, value, redirect_uri, verifier, nonce)


def _exchange(token_endpoint: str, client_id: str, secret: str, code: str, redirect_uri: str, verifier: str,
              nonce: str) -> str:
    """The code for tokens at the token endpoint; the ID token, whose nonce must be ours."""
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri, "code_verifier": verifier}
    auth = None
    if secret:  # client_secret_basic, the default (RFC 6749 §2.3.1: form-encoded before base64)
        auth = (quote(client_id, safe=""), quote(secret, safe=""))
    else:
        data["client_id"] = client_id
    try:
        resp = requests.post(token_endpoint, data=data, auth=auth, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
                             headers={"Accept": "application/json"}, allow_redirects=False)
    except requests.RequestException as exc:
        raise ClientError(f"cannot reach the token endpoint {token_endpoint}: {type(exc).__name__}") from None
    if len(resp.content) > MAX_DOCUMENT:
        raise ClientError(f"the token endpoint {token_endpoint} answered with more than {MAX_DOCUMENT} bytes")
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ClientError(f"the token endpoint answered HTTP {resp.status_code} without JSON")
    if resp.status_code != 200:
        raise ClientError(f"the token endpoint refused the code: {body.get('error')} "
                          f"{body.get('error_description') or ''}".rstrip())
    id_token = body.get("id_token")
    if not isinstance(id_token, str):
        raise ClientError("the token endpoint answered without an id_token (is 'openid' a scope of this client?)")
    try:
        _, claims = jose.peek(id_token)
    except jose.JOSEError as exc:
        raise ClientError(f"the provider's id_token cannot be read: {exc}") from None
    if claims.get("nonce") != nonce:
        raise ClientError("the provider's id_token does not carry this sign-in's nonce; not using it")
    return id_token
