"""Key URI scheme → backend, and the backends this process has opened.

The rest of hsmca names keys by URI only; which SDK serves a URI is decided here. Backends are
cached per process (per module and token for PKCS#11) so that all keys on one token share one
session; after a fork the cached backends notice the new pid themselves.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Hashable
from typing import Any, Protocol

from kms.errors import InvalidKeyURI
from kms.keyspec import KeySpec
from kms.pkcs11_backend import Pkcs11Backend
from kms.signer import CAKey
from kms.uri import KeyURI, parse_key_uri


class Backend(Protocol):
    name: str

    def open_key(self, uri: KeyURI) -> CAKey: ...

    def create_key(self, uri: KeyURI, spec: KeySpec) -> CAKey: ...

    def health(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class BackendFactory(Protocol):
    """A backend class fits: `identity(uri)` says which instance serves a URI, calling makes one."""

    def identity(self, uri: KeyURI) -> Hashable: ...

    def __call__(self, uri: KeyURI) -> Backend: ...


_factories: dict[str, BackendFactory] = {}
_backends: dict[tuple[str, Hashable], Backend] = {}
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a thread of the parent may have held it at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


def register_backend(scheme: str, factory: BackendFactory) -> None:
    """Serve key URIs of `scheme` with backends made by `factory` (replaces any previous one)."""
    with _lock:
        _factories[scheme.lower()] = factory


def registered_schemes() -> list[str]:
    return sorted(_factories)


def backend_for(uri: KeyURI | str) -> Backend:
    """The (cached) backend serving `uri`."""
    parsed = parse_key_uri(uri) if isinstance(uri, str) else uri
    with _lock:
        factory = _factories.get(parsed.scheme)
        if factory is None:
            raise InvalidKeyURI(f"no backend for {parsed.scheme}: key URIs in this version; "
                                f"available: {', '.join(sorted(_factories))}")
        key = (parsed.scheme, factory.identity(parsed))
        backend = _backends.get(key)
        if backend is None:
            backend = _backends[key] = factory(parsed)
        return backend


def open_key(uri: str) -> CAKey:
    """An adapter for the existing key named by `uri` (KeyNotFound if it does not exist)."""
    parsed = parse_key_uri(uri, key=True)
    return backend_for(parsed).open_key(parsed)


def create_key(uri: str, spec: KeySpec | str) -> CAKey:
    """Generate a new key inside the backend (KeyExists if the name is taken)."""
    parsed = parse_key_uri(uri, key=True)
    return backend_for(parsed).create_key(parsed, KeySpec.parse(spec))


def backends_health() -> list[dict[str, Any]]:
    """One report per backend opened in this process (for /health and metrics)."""
    with _lock:
        backends = list(_backends.values())
    return [b.health() for b in backends]


def close_all() -> None:
    """Log out and forget every backend (shutdown, tests). Adapters made earlier stop working."""
    with _lock:
        backends = list(_backends.values())
        _backends.clear()
    for b in backends:
        b.close()


class _Deferred:
    """A backend whose SDK is imported on first use, so a CA on PKCS#11 never loads hvac."""

    def __init__(self, module: str, cls: str) -> None:
        self.module, self.cls = module, cls

    def _load(self) -> BackendFactory:
        import importlib

        factory: BackendFactory = getattr(importlib.import_module(self.module), self.cls)
        return factory

    def identity(self, uri: KeyURI) -> Hashable:
        return self._load().identity(uri)

    def __call__(self, uri: KeyURI) -> Backend:
        return self._load()(uri)


register_backend("pkcs11", Pkcs11Backend)
register_backend("vault", _Deferred("kms.vault_backend", "VaultTransitBackend"))
register_backend("awskms", _Deferred("kms.aws_backend", "AwsKmsBackend"))
register_backend("gcpkms", _Deferred("kms.gcp_backend", "GcpKmsBackend"))
register_backend("azurekv", _Deferred("kms.azure_backend", "AzureKeyVaultBackend"))
