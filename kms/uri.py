"""Key URIs: `pkcs11:` per RFC 7512, the cloud schemes step-ca style (`name=value;…?…`).

A URI is the whole configuration of a key (where the module is, which token, which object, where
the PIN comes from), so it is parsed strictly enough that a typo fails here, with a reason, rather
than as "key not found" three layers down. Values are stored pct-decoded; `str()` writes them
back canonically, so `parse_key_uri(str(u)) == u`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote_to_bytes

from kms.errors import InvalidKeyURI

KNOWN_SCHEMES = ("pkcs11", "awskms", "gcpkms", "azurekv", "vault")

# RFC 7512 §2.3. Query attributes written in the path (step-ca writes
# `pkcs11:module-path=…;token=…`) are accepted and moved to the query.
PKCS11_PATH_ATTRS = frozenset({
    "token", "manufacturer", "serial", "model", "library-manufacturer", "library-description",
    "library-version", "object", "type", "id", "slot-manufacturer", "slot-description", "slot-id",
})
PKCS11_QUERY_ATTRS = frozenset({"pin-source", "pin-value", "module-name", "module-path"})
PKCS11_OBJECT_TYPES = frozenset({"public", "private", "cert", "secret-key", "data"})

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_ATTR_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")  # pk11-v-attr-nm-char
_BAD_PCT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_BAD_CHAR_RE = re.compile(r"[\x00-\x20\x7f#]")

# Characters RFC 7512 allows unencoded besides ALPHA / DIGIT / "-._~" (which quote() keeps).
_PATH_SAFE = ":[]@!$'()*+,=&"
_QUERY_SAFE = ":[]@!$'()*+,=/?|"
_GENERIC_SAFE = ":[]@!$'()*+,=/|"


@dataclass(frozen=True)
class KeyURI:
    """A parsed key URI. `path`/`query` hold decoded values; a pkcs11 `id` is bytes as latin-1.

    A bare path segment without `=` (the resource of `gcpkms:projects/…` or `vault:transit/…`)
    is kept under the empty attribute name.
    """

    scheme: str
    path: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Copies: a frozen URI must not change because a caller's dict did.
        object.__setattr__(self, "path", dict(self.path))
        object.__setattr__(self, "query", dict(self.query))

    def __hash__(self) -> int:
        return hash((self.scheme, frozenset(self.path.items()), frozenset(self.query.items())))

    def __str__(self) -> str:
        if self.scheme == "pkcs11":
            path = ";".join(f"{k}={_encode_pkcs11_value(k, v, _PATH_SAFE)}"
                            for k, v in self.path.items())
            query = "&".join(f"{k}={_encode_pkcs11_value(k, v, _QUERY_SAFE)}"
                             for k, v in self.query.items())
        else:
            items = sorted(self.path.items(), key=lambda kv: kv[0] != "")  # the bare resource first
            path = ";".join(_q(v, _GENERIC_SAFE) if k == "" else f"{k}={_q(v, _GENERIC_SAFE)}"
                            for k, v in items)
            query = "&".join(f"{k}={_q(v, _GENERIC_SAFE)}" for k, v in self.query.items())
        return f"{self.scheme}:{path}" + (f"?{query}" if query else "")

    def __repr__(self) -> str:
        # The default dataclass repr would print pin-value into logs and tracebacks.
        return f"KeyURI({str(self.redacted())!r})"

    def redacted(self) -> KeyURI:
        """The same URI without `pin-value`: what may be logged, shown or stored in audit."""
        return KeyURI(self.scheme, self.path, {k: v for k, v in self.query.items() if k != "pin-value"})

    @property
    def key_id(self) -> bytes | None:
        """The pkcs11 `id` attribute as bytes (CKA_ID), if present."""
        value = self.path.get("id")
        return None if value is None else value.encode("latin-1")

    @property
    def label(self) -> str | None:
        """The pkcs11 `object` attribute (CKA_LABEL), if present."""
        return self.path.get("object")


def parse_key_uri(s: str, *, key: bool = False) -> KeyURI:
    """Parse `s`; with `key=True` also require that it names a key (not only a token)."""
    if not isinstance(s, str) or not s.strip():
        raise InvalidKeyURI("the key URI is empty")
    s = s.strip()
    scheme, sep, rest = s.partition(":")
    if not sep or not _SCHEME_RE.fullmatch(scheme):
        # The input is not echoed: a misplaced secret must not end up in a log.
        raise InvalidKeyURI("not a key URI (expected SCHEME:…, e.g. pkcs11:token=…;object=…)")
    scheme = scheme.lower()
    if scheme not in KNOWN_SCHEMES:
        raise InvalidKeyURI(f"unknown key URI scheme {scheme!r}; known: {', '.join(KNOWN_SCHEMES)}")
    bad = _BAD_CHAR_RE.search(rest)
    if bad:
        offset = len(scheme) + 1 + bad.start()
        raise InvalidKeyURI(f"a space, control character or '#' (at offset {offset}) "
                            "must be pct-encoded in a key URI")
    path_part, _, query_part = rest.partition("?")
    uri = _parse_pkcs11(path_part, query_part) if scheme == "pkcs11" \
        else _parse_generic(scheme, path_part, query_part)
    if key:
        require_key(uri)
    return uri


def require_key(uri: KeyURI) -> None:
    """Raise InvalidKeyURI unless `uri` names one key (and, for pkcs11, its token)."""
    if uri.scheme == "pkcs11":
        if not any(a in uri.path for a in ("token", "serial", "slot-id")):
            raise InvalidKeyURI(f"pkcs11 key URI {str(uri.redacted())!r} names no token "
                                "(add token=LABEL, serial=… or slot-id=…)")
        if "object" not in uri.path and "id" not in uri.path:
            raise InvalidKeyURI(f"pkcs11 key URI {str(uri.redacted())!r} names no key "
                                "(add object=LABEL or id=…)")
        if uri.path.get("type", "private") != "private":
            raise InvalidKeyURI(f"pkcs11 key URI has type={uri.path['type']}; a signing key "
                                "is type=private (or no type)")
    elif not uri.path:
        raise InvalidKeyURI(f"{uri.scheme} key URI names no key")


def _parse_pkcs11(path_part: str, query_part: str) -> KeyURI:
    path: dict[str, str] = {}
    query: dict[str, str] = {}
    for name, raw in _attributes(path_part, ";", "path"):
        target = query if name in PKCS11_QUERY_ATTRS else path
        _put(target, name, _decode_pkcs11_value(name, raw))
    if ";" in query_part:
        raise InvalidKeyURI("';' must be pct-encoded (%3B) in the query part of a pkcs11 URI")
    for name, raw in _attributes(query_part, "&", "query"):
        if name in PKCS11_PATH_ATTRS:
            raise InvalidKeyURI(f"pkcs11 attribute {name!r} belongs in the path, before '?'")
        _put(query, name, _decode_pkcs11_value(name, raw))
    if "pin-source" in query and "pin-value" in query:
        raise InvalidKeyURI("a pkcs11 URI has either pin-source or pin-value, not both")
    return KeyURI("pkcs11", path, query)


def _parse_generic(scheme: str, path_part: str, query_part: str) -> KeyURI:
    path: dict[str, str] = {}
    for i, segment in enumerate(path_part.split(";") if path_part else []):
        if "=" not in segment and i == 0 and segment:
            path[""] = _decode_text(segment, "resource")
            continue
        name, raw = _split_attribute(segment, "path")
        _put(path, name, _decode_text(raw, name))
    query: dict[str, str] = {}
    for name, raw in _attributes(query_part, "&", "query"):
        _put(query, name, _decode_text(raw, name))
    return KeyURI(scheme, path, query)


def _attributes(part: str, separator: str, where: str) -> list[tuple[str, str]]:
    return [_split_attribute(seg, where) for seg in part.split(separator)] if part else []


def _split_attribute(segment: str, where: str) -> tuple[str, str]:
    name, eq, raw = segment.partition("=")
    if not eq or not _ATTR_NAME_RE.fullmatch(name):
        shown = name[:40] if eq else segment[:40]  # never the value: it may be a PIN
        raise InvalidKeyURI(f"malformed {where} attribute {shown!r} (expected name=value)")
    return name.lower(), raw


def _put(target: dict[str, str], name: str, value: str) -> None:
    if name in target:
        raise InvalidKeyURI(f"attribute {name!r} appears more than once")
    target[name] = value


def _pct_bytes(raw: str, name: str) -> bytes:
    if _BAD_PCT_RE.search(raw):
        raise InvalidKeyURI(f"attribute {name!r}: '%' must be followed by two hex digits")
    return unquote_to_bytes(raw)


def _decode_text(raw: str, name: str) -> str:
    try:
        return _pct_bytes(raw, name).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidKeyURI(f"attribute {name!r} is not UTF-8 once pct-decoded") from None


def _decode_pkcs11_value(name: str, raw: str) -> str:
    if name == "id":
        value = _pct_bytes(raw, name).decode("latin-1")
        if not value:
            raise InvalidKeyURI("attribute 'id' is empty")
        return value
    value = _decode_text(raw, name)  # error messages name the attribute, never its value
    if name == "type" and value not in PKCS11_OBJECT_TYPES:
        raise InvalidKeyURI(f"type must be one of {', '.join(sorted(PKCS11_OBJECT_TYPES))}, "
                            f"not {value!r}")
    if name == "slot-id" and not value.isdigit():
        raise InvalidKeyURI(f"slot-id must be a decimal number, not {value!r}")
    if name == "library-version" and not re.fullmatch(r"\d+(\.\d+)?", value):
        raise InvalidKeyURI(f"library-version must be M or M.N, not {value!r}")
    if name == "module-path" and not value.startswith("/"):
        raise InvalidKeyURI(f"module-path must be an absolute path, not {value!r}")
    if name in ("token", "object", "pin-source", "module-path") and not value:
        raise InvalidKeyURI(f"attribute {name!r} is empty")
    return value


def _encode_pkcs11_value(name: str, value: str, safe: str) -> str:
    if name == "id":
        return "".join(f"%{b:02X}" for b in value.encode("latin-1"))
    return _q(value, safe)


def _q(value: str, safe: str) -> str:
    return quote(value.encode("utf-8"), safe=safe)

