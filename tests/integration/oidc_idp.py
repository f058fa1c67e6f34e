"""A real OpenID Connect provider for tests (node oidc-provider, tests/oidc_provider/server.js) and a browser stand-in.

`start_idp(tmp_path, clients=[native_client("hsmca", "secret")], users={"alice": {...claims}})` starts it on a free
port of 127.0.0.1 (issuer `http://127.0.0.1:<port>`); `browser_login(auth_url, "alice")` does what the user's browser
does with an authorization URL (sign-in and consent pages of the provider, then the redirect to the client's loopback
listener); `code_flow_id_token` runs the whole authorization-code + PKCE flow to get an ID token.

Clients are native apps: a registered redirect URI `http://127.0.0.1` admits `http://127.0.0.1:<any port>` (RFC 8252
§7.3). PKCE (S256) is required of every client. Any password is accepted for a configured login; other logins are
refused with an error page. ID tokens carry the claims of the scopes asked for (`email`: email, email_verified;
`groups`: groups) and the nonce. The provider's endpoints are its default routes: /auth, /token, /jwks, /me.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urljoin, urlsplit

import requests
from joserfc.jwk import RSAKey

NODE_DIR = Path(__file__).parents[1] / "oidc_provider"
SERVER_JS = NODE_DIR / "server.js"
READY_TIMEOUT = 30.0
DEFAULT_SCOPE = "openid email groups"


class LoginError(Exception):
    """The provider refused the login or showed an error page (the message has the page's text)."""


def available() -> str | None:
    """Why the provider cannot run here (a skip reason), or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed: run `make deps`"
    if not (NODE_DIR / "node_modules" / "oidc-provider").is_dir():
        return f"{NODE_DIR / 'node_modules'} is missing: run `make deps`"
    return None


def make_signing_key(kid: str) -> dict[str, Any]:
    """A fresh RSA 2048 private JWK for RS256 signatures."""
    key = RSAKey.generate_key(2048, parameters={"kid": kid, "alg": "RS256", "use": "sig"}, private=True)
    return dict(key.as_dict(private=True))


def native_client(client_id: str, client_secret: str | None = None) -> dict[str, Any]:
    """Client metadata of a native app redirecting to a loopback port: confidential (client_secret_basic) with a
    secret, public (`none`) without."""
    client: dict[str, Any] = {
        "client_id": client_id,
        "application_type": "native",
        "redirect_uris": ["http://127.0.0.1"],
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic" if client_secret else "none",
    }
    if client_secret:
        client["client_secret"] = client_secret
    return client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class IdP:
    """A running provider; `restart` keeps its port and issuer."""

    def __init__(
        self, workdir: Path, port: int, clients: list[dict[str, Any]], users: dict[str, dict[str, Any]],
        keys: list[dict[str, Any]],
    ):
        self.workdir = workdir
        self.port = port
        self.issuer = f"http://127.0.0.1:{port}"
        self.clients = clients
        self.users = users
        self.keys = keys
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def configuration_endpoint(self) -> str:
        return self.issuer + "/.well-known/openid-configuration"

    @property
    def authorization_endpoint(self) -> str:
        return self.issuer + "/auth"

    @property
    def token_endpoint(self) -> str:
        return self.issuer + "/token"

    @property
    def jwks_uri(self) -> str:
        return self.issuer + "/jwks"

    def start(self) -> None:
        """Write the config, start node and wait for its `ready` line."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "oidc-provider.json"
        config.write_text(json.dumps({
            "port": self.port, "issuer": self.issuer, "jwks": {"keys": self.keys},
            "clients": self.clients, "users": self.users,
        }, indent=2))
        stdout, stderr = self.workdir / "oidc-provider.out", self.workdir / "oidc-provider.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            self.proc = subprocess.Popen(["node", str(SERVER_JS), str(config)], cwd=NODE_DIR, stdout=out, stderr=err)
        deadline = time.monotonic() + READY_TIMEOUT
        while f"ready {self.issuer}" not in stdout.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"oidc-provider did not start on {self.issuer}: {stderr.read_text().strip()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM the provider and wait for it (SIGKILL after 10 s)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, jwks: list[dict[str, Any]]) -> None:
        """Start again on the same port and issuer with a new key set (the first key signs)."""
        self.stop()
        self.keys = jwks
        self.start()

    def stats(self) -> dict[str, int]:
        """GET requests served so far (since the last start) on the JWKS endpoint and the discovery document."""
        resp = requests.get(self.issuer + "/__test/stats", timeout=10)
        resp.raise_for_status()
        return dict(resp.json())

    def __enter__(self) -> IdP:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_idp(
    workdir: Path, *, clients: list[dict[str, Any]], users: dict[str, dict[str, Any]],
    keys: list[dict[str, Any]] | None = None, port: int | None = None,
) -> IdP:
    """Start a provider with these clients and users (login → claims); one fresh signing key unless given keys."""
    idp = IdP(workdir, port or free_port(), clients, users, keys or [make_signing_key("key-1")])
    idp.start()
    return idp


class _Page(HTMLParser):
    """The forms (action, method, fields) and the visible text of an HTML page."""

    def __init__(self, html: str):
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self.chunks: list[str] = []
        self._skip = 0
        self.feed(html)
        self.close()

    @property
    def text(self) -> str:
        return re.sub(r"\s+", " ", " ".join(self.chunks)).strip()[:1000]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag in ("script", "style", "title"):
            self._skip += 1
        elif tag == "form":
            self.forms.append({"action": a.get("action", ""), "method": a.get("method", "get").upper(), "fields": {}})
        elif tag in ("input", "button") and self.forms and a.get("name"):
            self.forms[-1]["fields"][a["name"]] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "title"):
            self._skip = max(0, self._skip - 1)

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.chunks.append(data)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def browser_login(auth_url: str, login: str, *, timeout: float = 30) -> requests.Response:
    """Act as the browser: open auth_url, sign in as `login`, grant consent, and follow the redirects up to and
    including the one leaving the provider (to the client's loopback redirect_uri); return that last response.

    Raises LoginError, with the page's text, on an error page or a refused login.
    """
    deadline = time.monotonic() + timeout
    provider = _origin(auth_url)
    method, url, data = "GET", auth_url, None
    signed_in = False
    with requests.Session() as session:
        for _ in range(20):
            remaining = max(0.1, deadline - time.monotonic())
            resp = session.request(method, url, data=data, allow_redirects=False, timeout=remaining)
            if resp.is_redirect:
                method, url, data = "GET", urljoin(resp.url, resp.headers["location"]), None
                if _origin(url) != provider:  # to the client's redirect_uri
                    return session.get(url, allow_redirects=False, timeout=remaining)
                continue
            page = _Page(resp.text)
            if resp.status_code >= 400 or len(page.forms) != 1:
                raise LoginError(f"HTTP {resp.status_code} at {resp.url}: {page.text}")
            form = page.forms[0]
            fields = dict(form["fields"])
            if "login" in fields:  # the sign-in form; otherwise the consent form, submitted as it is
                if signed_in:
                    raise LoginError(f"sign-in as {login!r} not accepted at {resp.url}: {page.text}")
                fields.update(login=login, password="any-password")
                signed_in = True
            method, url = form["method"], urljoin(resp.url, form["action"] or resp.url)
            if method == "GET":
                url, data = f"{url.split('?')[0]}?{urlencode(fields)}", None
            else:
                data = fields
    raise LoginError(f"no redirect to the client after 20 steps, at {url}")


class _Loopback:
    """A one-shot loopback redirect_uri listener that records the query of the request it gets."""

    def __init__(self) -> None:
        self.query: dict[str, str] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.query = dict(parse_qsl(urlsplit(self.path).query))
                body = b"You may close this window."
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.redirect_uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def code_flow_id_token(
    idp: IdP, client_id: str, client_secret: str | None, login: str, *, nonce: str = "n-0S6_WzA2Mj"
) -> str:
    """The authorization-code flow with PKCE as a native client would do it; returns the ID token (compact JWS).
    Uses the provider's endpoints directly, so it does not count as a discovery or JWKS fetch."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    state = secrets.token_urlsafe(16)
    loopback = _Loopback()
    try:
        params = {
            "response_type": "code", "client_id": client_id, "redirect_uri": loopback.redirect_uri,
            "scope": DEFAULT_SCOPE, "state": state, "nonce": nonce,
            "code_challenge": challenge, "code_challenge_method": "S256",
        }
        browser_login(f"{idp.authorization_endpoint}?{urlencode(params)}", login)
        query = loopback.query
    finally:
        loopback.close()
    if "error" in query or query.get("state") != state or "code" not in query:
        raise LoginError(f"authorization response: {query}")
    data = {
        "grant_type": "authorization_code", "code": query["code"], "redirect_uri": loopback.redirect_uri,
        "code_verifier": verifier,
    }
    auth = None
    if client_secret is None:
        data["client_id"] = client_id
    else:  # RFC 6749 §2.3.1: form-urlencoded, then Basic
        auth = requests.auth.HTTPBasicAuth(quote(client_id, safe=""), quote(client_secret, safe=""))
    resp = requests.post(idp.token_endpoint, data=data, auth=auth, timeout=30)
    if resp.status_code != 200:
        raise LoginError(f"token endpoint: HTTP {resp.status_code}: {resp.text}")
    return str(resp.json()["id_token"])
