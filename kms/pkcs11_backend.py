"""The PKCS#11 backend: key URI → adapter for an existing key, or a new key made in the token.

One backend per (module, token) per process, so every key on a token shares its one session.
Keys are generated inside the token, sensitive and never extractable; nothing here can export one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass

from kms import pkcs11_module as pm
from kms.errors import InvalidKeyURI, KeyExists, KMSError, PermissionDenied
from kms.keyspec import KeySpec
from kms.pkcs11_keys import (
    ADAPTERS,
    EC_PARAMS,
    Pkcs11Key,
    ec_public_key,
    rsa_public_key,
)
from kms.pkcs11_session import KeyRef, TokenSelector, TokenSession
from kms.signer import CAKey
from kms.uri import KeyURI, require_key

log = logging.getLogger(__name__)

KEYGEN_TIMEOUT = 300.0  # seconds a key generation may take (RSA-4096 on a slow HSM)

_KEY_TYPE: dict[str, tuple[KeyType, Mechanism]] = {
    "EC": (KeyType.EC, Mechanism.EC_KEY_PAIR_GEN),
    "RSA": (KeyType.RSA, Mechanism.RSA_PKCS_KEY_PAIR_GEN),
    "OKP": (KeyType.EC_EDWARDS, Mechanism.EC_EDWARDS_KEY_PAIR_GEN),
}


class Pkcs11Backend:
    """Keys on one token of one PKCS#11 module."""

    name = "pkcs11"

    @staticmethod
    def identity(uri: KeyURI) -> Hashable:
        """Which backend instance serves `uri`: one per (module, token)."""
        return (pm.module_path(uri.query.get("module-path")), TokenSelector.from_uri(uri))

    def __init__(self, uri: KeyURI) -> None:
        self.tokens = TokenSession(pm.module_path(uri.query.get("module-path")),
                                   TokenSelector.from_uri(uri), timeout=call_timeout(uri))

    def open_key(self, uri: KeyURI) -> CAKey:
        """An adapter for the existing key `uri` names (KeyNotFound if there is none)."""
        require_key(uri)
        self.tokens.use_pin(resolve_pin(uri))
        ref = KeyRef(uri.label, uri.key_id)

        def load(session: Any) -> tuple[KeySpec, Any]:
            private = self.tokens.find(session, ref)
            attrs = private.get_attributes([Attribute.KEY_TYPE, Attribute.ID,
                                            Attribute.SENSITIVE, Attribute.EXTRACTABLE])
            if not attrs[Attribute.SENSITIVE] or attrs[Attribute.EXTRACTABLE]:
                log.warning("%s: key %s is exportable (CKA_SENSITIVE=%s, CKA_EXTRACTABLE=%s); "
                            "a CA key should be created inside the token", self.tokens.describe(),
                            ref, attrs[Attribute.SENSITIVE], attrs[Attribute.EXTRACTABLE])
            return self._public_key(session, private, attrs[Attribute.KEY_TYPE],
                                    bytes(attrs[Attribute.ID]), ref)

        spec, public = self.tokens.call(load, failure=KMSError)
        return self._adapter(uri, ref, spec, public)

    def create_key(self, uri: KeyURI, spec: KeySpec) -> CAKey:
        """Generate a key pair inside the token, labelled with the URI's `object`."""
        require_key(uri)
        if uri.label is None:
            raise InvalidKeyURI("creating a key needs object=LABEL in the key URI")
        spec = KeySpec.parse(spec)
        self.tokens.use_pin(resolve_pin(uri))
        key_id = uri.key_id or os.urandom(16)
        ref = KeyRef(uri.label, uri.key_id)

        def refuse_existing(session: Any) -> None:
            for attr, value in ((Attribute.LABEL, uri.label), (Attribute.ID, key_id)):
                if self.tokens.exists(session, {attr: value}):
                    what = f"label {uri.label!r}" if attr is Attribute.LABEL else f"id {key_id.hex()}"
                    raise KeyExists(f"an object with {what} already exists on "
                                    f"{self.tokens.describe()}; refusing to create another")

        def generate(session: Any) -> tuple[KeySpec, Any]:
            key_type, mechanism = _KEY_TYPE[spec.kty]
            public_template, private_template = key_templates(spec, uri.label or "", key_id)
            _, private = session.generate_keypair(
                key_type, spec.bits if spec.kty == "RSA" else None, store=True,
                label=uri.label, id=key_id, mechanism=mechanism,
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                public_template=public_template, private_template=private_template)
            self.tokens.remember(ref, private)
            return self._public_key(session, private, key_type, key_id, KeyRef(uri.label, key_id))

        def create() -> tuple[KeySpec, Any]:
            self.tokens.call(refuse_existing, failure=KMSError)
            # Not retried: a retry after a half-finished generation would meet its own key.
            return self.tokens.call(generate, failure=KMSError, retry=False)

        # RSA-4096 generation takes seconds in SoftHSM, longer in many HSMs.
        made_spec, public = pm.run(create, timeout=max(self.tokens.timeout, KEYGEN_TIMEOUT),
                                   what=self.tokens.describe())
        log.info("created %s key %s on %s", spec.value, ref, self.tokens.describe())
        return self._adapter(uri, ref, made_spec, public)

    def health(self) -> dict[str, Any]:
        return self.tokens.health()

    def close(self) -> None:
        self.tokens.close()

    def _public_key(self, session: Any, private: Any, key_type: Any, key_id: bytes,
                    ref: KeyRef) -> tuple[KeySpec, Any]:
        if key_type == KeyType.RSA:
            attrs = private.get_attributes([Attribute.MODULUS, Attribute.PUBLIC_EXPONENT])
            return rsa_public_key(attrs[Attribute.MODULUS], attrs[Attribute.PUBLIC_EXPONENT])
        if key_type in (KeyType.EC, KeyType.EC_EDWARDS):
            # A private EC key carries no point; the public half, linked by CKA_ID, does.
            public_ref = KeyRef(None, key_id) if key_id else ref
            public = self.tokens.find(session, public_ref, ObjectClass.PUBLIC_KEY)
            attrs = public.get_attributes([Attribute.EC_PARAMS, Attribute.EC_POINT])
            return ec_public_key(attrs[Attribute.EC_PARAMS], attrs[Attribute.EC_POINT])
        raise KMSError(f"key {ref} on {self.tokens.describe()} has unsupported type {key_type!r}")

    def _adapter(self, uri: KeyURI, ref: KeyRef, spec: KeySpec, public: Any) -> CAKey:
        adapter: Pkcs11Key = ADAPTERS[spec.kty](tokens=self.tokens, ref=ref, uri=str(uri.redacted()),
                                                spec=spec, public=public, timeout=call_timeout(uri))
        return cast(CAKey, adapter)  # each concrete class also subclasses its family's ABC


Template = dict[Attribute, Any]


def key_templates(spec: KeySpec, label: str, key_id: bytes) -> tuple[Template, Template]:
    """(public, private) templates: a signing-only pair that can never leave the token."""
    common = {Attribute.TOKEN: True, Attribute.LABEL: label, Attribute.ID: key_id}
    public: Template = {
        **common, Attribute.PRIVATE: False, Attribute.VERIFY: True,
        Attribute.ENCRYPT: False, Attribute.WRAP: False, Attribute.DERIVE: False,
    }
    private: Template = {
        **common, Attribute.PRIVATE: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
        Attribute.SIGN: True, Attribute.DECRYPT: False, Attribute.UNWRAP: False,
        Attribute.DERIVE: False,
    }
    if spec.kty == "RSA":
        public[Attribute.MODULUS_BITS] = spec.bits
        public[Attribute.PUBLIC_EXPONENT] = (65537).to_bytes(3, "big")
    else:
        public[Attribute.EC_PARAMS] = EC_PARAMS[spec]
    return public, private


def call_timeout(uri: KeyURI) -> float:
    """The URI's `timeout` query attribute (seconds a signature may take, queueing included)."""
    raw = uri.query.get("timeout")
    if raw is None:
        return pm.DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3600:
        raise InvalidKeyURI(f"pkcs11 key URI: timeout={raw!r} is not a number of seconds in (0, 3600]")
    return value


def resolve_pin(uri: KeyURI) -> str:
    """The user PIN from `pin-value` or `pin-source` (a file: URI or a path; first line)."""
    if "pin-value" in uri.query:
        return uri.query["pin-value"]
    source = uri.query.get("pin-source")
    if source is None:
        raise PermissionDenied(f"key URI {str(uri.redacted())!r} gives no PIN "
                               "(add ?pin-source=file:/path/to/pin)")
    path = _pin_path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise PermissionDenied(f"cannot read the PIN from {path}: {reason}") from None
    pin = text.splitlines()[0] if text else ""
    if not pin:
        raise PermissionDenied(f"the PIN file {path} is empty")
    return pin


def _pin_path(source: str) -> Path:
    if source.startswith("file:"):
        parts = urlsplit(source)
        if parts.netloc not in ("", "localhost"):
            raise InvalidKeyURI(f"pin-source {source!r}: only local file: URIs are supported")
        return Path(unquote(parts.path))
    if ":" in source.split("/")[0]:
        raise InvalidKeyURI(f"pin-source {source!r}: only file: URIs and paths are supported")
    return Path(source)
