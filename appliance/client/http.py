"""A small HTTPS client for the CA: pinned root, timeouts, and the server's message on errors."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import requests
import urllib3

DEFAULT_TIMEOUT = 15.0


class ClientError(Exception):
    """The CA could not be reached or refused the request; the message is the CA's own."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class CAClient:
    def __init__(self, ca_url: str, root: Path | None, *, timeout: float = DEFAULT_TIMEOUT,
                 verify: bool = True, client_cert: tuple[Path, Path] | None = None):
        if not ca_url.startswith("https://"):
            raise ClientError(f"--ca-url must be an https:// URL, got {ca_url!r}")
        self.ca_url = ca_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        # Passed on every request: a session-level `verify` loses to $REQUESTS_CA_BUNDLE.
        self.verify: str | bool = str(root) if (verify and root) else verify
        # mTLS: the certificate file (leaf, then its intermediate) and its key, for renew/rekey/revoke.
        self.cert = (str(client_cert[0]), str(client_cert[1])) if client_cert else None

    def _request(self, method: str, path: str, **kw: Any) -> requests.Response:
        url = f"{self.ca_url}{path}"
        try:
            with warnings.catch_warnings():
                # Only `bootstrap` asks for verify=False, and it checks the root's hash itself.
                warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                resp = self.session.request(method, url, timeout=self.timeout, verify=self.verify,
                                            cert=self.cert, **kw)
        except requests.exceptions.SSLError as exc:
            raise ClientError(f"TLS error talking to {self.ca_url} (is --root the CA's root?): {exc}") from None
        except requests.exceptions.RequestException as exc:
            raise ClientError(f"cannot reach the CA at {self.ca_url}: {exc}") from None
        if resp.status_code >= 400:
            try:
                body = resp.json()
                message = body.get("message") or resp.reason
                detail = body.get("detail")
                if isinstance(detail, list):
                    message += "".join(f"\n  - {d}" for d in detail)
            except ValueError:
                message = resp.text[:200] or resp.reason
            raise ClientError(f"the CA refused {method} {path} ({resp.status_code}): {message}",
                              resp.status_code)
        return resp

    def get_json(self, path: str) -> dict[str, Any]:
        data = self._request("GET", path).json()
        if not isinstance(data, dict):
            raise ClientError(f"unexpected response from {path}")
        return data

    def get_bytes(self, path: str) -> bytes:
        """A binary resource (a CRL), with the CA's message on errors like the JSON calls."""
        return self._request("GET", path).content

    def post_json(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        data = self._request("POST", path, json=body, headers=headers).json()
        if not isinstance(data, dict):
            raise ClientError(f"unexpected response from {path}")
        return data
