"""An OpenID provider's discovery document and signing keys, fetched with bounds and cached.

The CA verifies ID tokens with keys it fetches from the provider, so what the provider (or whoever poses as
it) sends is untrusted input, and a token a client sends must not be able to make the CA fetch at will:

- every fetch has a connect and a read timeout, a size bound, and goes through the standard proxy variables
  (`HTTPS_PROXY`, `NO_PROXY`: requests reads them);
- the key set is cached for the provider's `Cache-Control: max-age` (bounded to 1 minute .. 1 day; 1 hour
  when it says nothing), and refetched early only for a `kid` it does not hold, at most once every
  `REFETCH_AT_MOST_EVERY` whatever the tokens say; concurrent requests share one fetch;
- a provider that cannot be reached leaves the cached keys in use; with none cached, a 503 says why.

Nothing is fetched when the CA starts: a provider that is down must not keep the CA from serving others.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from appliance.config import provider_url
from appliance.errors import ServiceUnavailable
from appliance.provisioners import jose

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 5.0
MAX_DOCUMENT = 256 * 1024  # a discovery document or a key set; real ones are a few KiB
MAX_KEYS = 100
REFETCH_AT_MOST_EVERY = 10.0  # seconds between fetches caused by an unknown kid
DEFAULT_MAX_AGE = 3600.0
MIN_MAX_AGE, MAX_MAX_AGE = 60.0, 86400.0
WELL_KNOWN = "/.well-known/openid-configuration"
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)", re.I)


class ProviderError(Exception):
    """The provider's document or keys could not be fetched or make no sense; the message says which and why."""


def discovery_url(configuration_endpoint: str) -> str:
    """step-ca's rule: the well-known path is appended unless the endpoint already names it."""
    parts = urlsplit(configuration_endpoint)
    if WELL_KNOWN in parts.path:
        return configuration_endpoint
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + WELL_KNOWN, parts.query, ""))


def fetch_json(url: str, what: str) -> tuple[dict[str, Any], float | None]:
    """GET a JSON object within the bounds; (object, max-age seconds or None). ProviderError saying why not."""
    import requests  # here: a CA without OIDC provisioners never loads it (4 MiB in every worker)

    try:
        with requests.get(url, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), stream=True,
                          headers={"Accept": "application/json"}, allow_redirects=False) as resp:
            if resp.status_code != 200:
                raise ProviderError(f"{what} {url} answered HTTP {resp.status_code}")
            body = b""
            deadline = time.monotonic() + READ_TIMEOUT
            for chunk in resp.iter_content(16384):
                body += chunk
                if len(body) > MAX_DOCUMENT:
                    raise ProviderError(f"{what} {url} is larger than {MAX_DOCUMENT // 1024} KiB")
                if time.monotonic() > deadline:  # a provider trickling bytes: the read timeout is per read
                    raise ProviderError(f"{what} {url} took longer than {READ_TIMEOUT:.0f} s to send")
            cache = resp.headers.get("Cache-Control", "")
    except requests.RequestException as exc:
        raise ProviderError(f"cannot fetch {what} {url}: {type(exc).__name__}") from None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ProviderError(f"{what} {url} is not JSON") from None
    if not isinstance(data, dict):
        raise ProviderError(f"{what} {url} is not a JSON object")
    match = _MAX_AGE.search(cache)
    return data, float(match.group(1)) if match else None


@dataclass(frozen=True)
class Discovery:
    issuer: str
    jwks_uri: str
    authorization_endpoint: str
    token_endpoint: str


def parse_discovery(data: dict[str, Any], url: str, tenant_id: str | None = None) -> Discovery:
    """The fields the CA and its clients use; ProviderError naming the field that is missing or wrong."""
    fields: dict[str, str] = {}
    for name in ("issuer", "jwks_uri", "authorization_endpoint", "token_endpoint"):
        value = data.get(name)
        if not isinstance(value, str) or not value:
            raise ProviderError(f"the discovery document {url} has no {name}")
        if name != "issuer":
            try:
                provider_url(value, name)
            except ValueError as exc:
                raise ProviderError(f"the discovery document {url}: {exc}") from None
        fields[name] = value
    if tenant_id:
        fields["issuer"] = fields["issuer"].replace("{tenantid}", tenant_id)
    return Discovery(**fields)


@dataclass(frozen=True)
class ProviderKey:
    key: jose.PublicKey
    kid: str | None
    algorithms: tuple[str, ...]  # from the key (its `alg` if it names one), never from a token


def parse_key_set(data: dict[str, Any], url: str) -> list[ProviderKey]:
    """The signing keys of a JWK set; keys this CA cannot use (encryption keys, symmetric, odd curves) are
    skipped, as a provider may publish those too."""
    keys = data.get("keys")
    if not isinstance(keys, list):
        raise ProviderError(f"the key set {url} has no 'keys' list")
    out: list[ProviderKey] = []
    for item in keys[:MAX_KEYS]:
        if not isinstance(item, dict) or item.get("use", "sig") != "sig":
            continue
        try:
            key = jose.import_jwk(item)
            allowed = jose.allowed_algorithms(key)
        except jose.JOSEError:
            continue
        if key.is_private:
            continue  # a provider publishing private keys is broken; never verify with such a key
        alg = item.get("alg")
        if alg is not None and alg not in allowed:
            continue
        kid = item.get("kid")
        out.append(ProviderKey(key, kid if isinstance(kid, str) else None, (alg,) if alg else tuple(allowed)))
    if not out:
        raise ProviderError(f"the key set {url} holds no signing key this CA can use (EC, RSA or Ed25519)")
    return out


class ProviderKeys:
    """One provider's discovery document and key set, shared by the threads of one worker.

    The lock guards the fields only and is never held while fetching: one thread fetches, the others go on with
    the keys already held (or a 503 when none are), so a provider that hangs holds up one request, not the pool.
    """

    def __init__(self, configuration_endpoint: str, *, tenant_id: str | None = None,
                 clock: Any = time.monotonic) -> None:
        self.url = discovery_url(configuration_endpoint)
        self.tenant_id = tenant_id
        self._clock = clock
        self._lock = threading.Lock()
        self._discovery: Discovery | None = None
        self._keys: list[ProviderKey] = []
        self._expires = 0.0
        self._last_attempt: float | None = None
        self._fetching = False

    def discovery(self) -> Discovery:
        """The discovery document, fetched once (again, after a failure, at most every REFETCH_AT_MOST_EVERY)."""
        with self._lock:
            if self._discovery is not None:
                return self._discovery
            now = self._clock()
            if self._fetching or (self._last_attempt is not None
                                  and now - self._last_attempt < REFETCH_AT_MOST_EVERY):
                raise ServiceUnavailable(f"the OpenID provider's discovery document {self.url} is being fetched "
                                         "or could not be fetched recently; try again shortly")
            self._fetching, self._last_attempt = True, now
        try:
            data, _ = fetch_json(self.url, "the discovery document")
            found = parse_discovery(data, self.url, self.tenant_id)
        except ProviderError as exc:
            raise ServiceUnavailable(f"OpenID provider unavailable: {exc}") from None
        finally:
            with self._lock:
                self._fetching = False
        with self._lock:
            self._discovery, self._last_attempt = found, None  # the key set's first fetch is not a refetch
        return found

    def keys(self, kid: str | None) -> list[ProviderKey]:
        """The keys a token with this `kid` may be signed with (all of them for a token without one)."""
        jwks_uri = self.discovery().jwks_uri
        with self._lock:
            now = self._clock()
            stale = now >= self._expires
            missing = kid is not None and not any(k.kid == kid for k in self._keys)
            recent = self._last_attempt is not None and now - self._last_attempt < REFETCH_AT_MOST_EVERY
            if self._fetching or not (stale or (missing and not recent)):
                if not self._keys:
                    raise ServiceUnavailable("the OpenID provider's key set is being fetched; try again shortly")
                return self._matching(kid)
            self._fetching, self._last_attempt = True, now
        try:
            data, max_age = fetch_json(jwks_uri, "the key set")
            keys = parse_key_set(data, jwks_uri)
        except ProviderError as exc:
            with self._lock:
                self._fetching = False
                if not self._keys:
                    raise ServiceUnavailable(f"OpenID provider unavailable: {exc}") from None
                self._expires = now + REFETCH_AT_MOST_EVERY  # keep the keys we have; try again later
                return self._matching(kid)
        except BaseException:
            with self._lock:
                self._fetching = False
            raise
        age = DEFAULT_MAX_AGE if max_age is None else max_age
        with self._lock:
            self._keys, self._fetching = keys, False
            self._expires = now + min(max(age, MIN_MAX_AGE), MAX_MAX_AGE)
            return self._matching(kid)

    def _matching(self, kid: str | None) -> list[ProviderKey]:
        return [k for k in self._keys if kid is None or k.kid is None or k.kid == kid]
