"""One logged-in session per token per process, and the retry rule around every call.

Sessions open lazily (after a server forks its workers), key handles are cached (a lookup costs
more than a signature), and when the HSM drops a session (idle timeout, device error, another
process's C_Finalize) the call re-opens, logs in, looks the key up again and retries once.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pkcs11 import Attribute, ObjectClass, TokenFlag
from pkcs11 import exceptions as p11e

from kms import pkcs11_module as pm
from kms.errors import (
    BackendUnavailable,
    KeyNotFound,
    KMSError,
    PermissionDenied,
    SigningFailed,
)
from kms.uri import KeyURI

log = logging.getLogger(__name__)

T = TypeVar("T")

_KIND = {ObjectClass.PRIVATE_KEY: "private key", ObjectClass.PUBLIC_KEY: "public key"}


@dataclass(frozen=True)
class TokenSelector:
    """The RFC 7512 token attributes of a URI: what picks one token out of a module."""

    label: str | None = None
    serial: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    slot_id: int | None = None

    @classmethod
    def from_uri(cls, uri: KeyURI) -> TokenSelector:
        slot = uri.path.get("slot-id")
        return cls(uri.path.get("token"), uri.path.get("serial"), uri.path.get("manufacturer"),
                   uri.path.get("model"), int(slot) if slot is not None else None)

    def matches(self, slot: Any, token: Any) -> bool:
        def same(want: str | None, have: str | bytes) -> bool:
            text = have.decode("ascii", "replace") if isinstance(have, bytes) else have
            return want is None or want == text.rstrip(" \x00")
        return (same(self.label, token.label) and same(self.serial, token.serial)
                and same(self.manufacturer, token.manufacturer_id) and same(self.model, token.model)
                and (self.slot_id is None or self.slot_id == slot.slot_id))

    def __str__(self) -> str:
        parts = [f"token={self.label}" if self.label is not None else "",
                 f"serial={self.serial}" if self.serial is not None else "",
                 f"manufacturer={self.manufacturer}" if self.manufacturer is not None else "",
                 f"model={self.model}" if self.model is not None else "",
                 f"slot-id={self.slot_id}" if self.slot_id is not None else ""]
        return ";".join(p for p in parts if p) or "any token"


@dataclass(frozen=True)
class KeyRef:
    """How a key is found on its token: CKA_LABEL and/or CKA_ID."""

    label: str | None
    key_id: bytes | None

    def template(self, cls: ObjectClass) -> dict[Attribute, Any]:
        t: dict[Attribute, Any] = {Attribute.CLASS: cls}
        if self.label is not None:
            t[Attribute.LABEL] = self.label
        if self.key_id is not None:
            t[Attribute.ID] = self.key_id
        return t

    def __str__(self) -> str:
        parts = ([f"object={self.label}"] if self.label is not None else []) + \
                ([f"id={self.key_id.hex()}"] if self.key_id is not None else [])
        return ";".join(parts)


class TokenSession:
    """The session to one token of one module, shared by every key on it in this process."""

    def __init__(self, module: str, selector: TokenSelector, *, timeout: float = pm.DEFAULT_TIMEOUT) -> None:
        self.module = module
        self.selector = selector
        self.timeout = timeout
        self._pin_lock = threading.Lock()
        self._pin: str | None = None
        self._pin_refused = False  # a refused PIN is not retried: real HSMs lock after a few tries
        self._logged_in_once = False
        self._session: Any = None
        self._generation = 0
        self._handles: dict[tuple[ObjectClass, KeyRef], Any] = {}
        self._closed = False

    def describe(self) -> str:
        return f"PKCS#11 {self.selector} ({self.module})"

    def use_pin(self, pin: str) -> None:
        """Set the user PIN. One process logs in to a token once (PKCS#11 login is per
        application), so a different PIN later is refused instead of silently ignored."""
        with self._pin_lock:
            if self._pin is not None and hmac.compare_digest(self._pin.encode(), pin.encode()):
                return
            if self._logged_in_once:
                raise PermissionDenied(f"{self.describe()}: this key URI's PIN differs from the "
                                       "one this process logged in with")
            self._pin, self._pin_refused = pin, False

    def call(self, fn: Callable[[Any], T], *, failure: type[KMSError] = SigningFailed,
             retry: bool = True, timeout: float | None = None) -> T:
        """Run `fn(session)` on the PKCS#11 thread; on a lost session re-open and retry once.

        A refused operation (bad mechanism, bad data, refused PIN) is never retried. The whole
        call, retry included, must finish within `timeout` (default: the URI's `timeout`).
        """
        return pm.run(lambda: self._call(fn, failure, retry), timeout=timeout or self.timeout,
                      what=self.describe())

    def _call(self, fn: Callable[[Any], T], failure: type[KMSError], retry: bool) -> T:
        if self._closed:
            raise BackendUnavailable(f"{self.describe()}: this backend was closed")
        for attempt in (1, 2):
            try:
                return fn(self._current())
            except p11e.PKCS11Error as exc:
                if attempt == 1 and retry and pm.is_lost_session(exc):
                    log.warning("%s: %s; re-opening the session and retrying once",
                                self.describe(), pm.error_name(exc))
                    self._drop(reinitialize=pm.not_initialized(exc))
                    continue
                if isinstance(exc, pm.PIN_REFUSED):
                    self._pin_refused = True
                if pm.is_lost_session(exc):
                    self._drop(reinitialize=False)
                raise pm.translate(exc, failure, self.describe()) from exc
        raise AssertionError("unreachable")

    def find(self, session: Any, ref: KeyRef, cls: ObjectClass = ObjectClass.PRIVATE_KEY) -> Any:
        """The one object of class `cls` matching `ref`, from the handle cache when possible."""
        cached = self._handles.get((cls, ref))
        if cached is not None:
            return cached
        # Exhaust the search: an abandoned search would be finalised later, outside the lock.
        found = list(session.get_objects(ref.template(cls)))
        kind = _KIND.get(cls, "object")
        if not found:
            raise KeyNotFound(f"no {kind} with {ref} on {self.describe()}")
        if len(found) > 1:
            raise KeyNotFound(f"{len(found)} {kind}s match {ref} on {self.describe()}; "
                              "name the key by a unique object label or id")
        self._handles[(cls, ref)] = found[0]
        return found[0]

    def remember(self, ref: KeyRef, obj: Any, cls: ObjectClass = ObjectClass.PRIVATE_KEY) -> None:
        """Cache a handle we already hold (a fresh key), so the first signature needs no search.

        (python-pkcs11 complains from a finaliser when a search starts on a dead session; with
        handles cached, searches only ever run on a freshly opened one.)
        """
        self._handles[(cls, ref)] = obj

    def exists(self, session: Any, template: dict[Attribute, Any]) -> bool:
        return bool(list(session.get_objects(template)))

    def health(self) -> dict[str, Any]:
        """A cheap check (token info; the open session, if any, is exercised and healed)."""
        report: dict[str, Any] = {"backend": "pkcs11", "module": self.module,
                                  "token": str(self.selector), "ok": False, "detail": ""}

        def check() -> None:
            token = self._token(pm.loaded_module(self.module), rescan_if_missing=False)
            if token.flags & TokenFlag.USER_PIN_LOCKED:
                report["detail"] = "the token's user PIN is locked"
            elif self._pin_refused:
                report["detail"] = "the token refused the configured PIN"
            elif self._session is None:
                report.update(ok=True, detail="token present; no session open yet")
            else:
                self.call(_probe, failure=BackendUnavailable)
                report.update(ok=True, detail="token present; session ok")

        try:
            pm.run(check, timeout=self.timeout, what=self.describe())
        except KMSError as exc:
            report["detail"] = exc.reason
        except p11e.PKCS11Error as exc:
            report["detail"] = pm.error_name(exc)
        return report

    def close(self) -> None:
        """Log out and close the session (only if it belongs to this process); final."""
        def close() -> None:
            self._closed = True
            session, self._session = self._session, None
            self._handles.clear()
            if session is not None and pm.is_current(self.module, self._generation):
                try:
                    session.close()
                except p11e.PKCS11Error as exc:
                    log.debug("closing %s: %s", self.describe(), pm.error_name(exc))

        try:
            pm.run(close, timeout=self.timeout, what=self.describe())
        except BackendUnavailable as exc:
            self._closed = True
            log.warning("closing %s: %s", self.describe(), exc.reason)

    # -- internals (all called on the PKCS#11 thread) --

    def _current(self) -> Any:
        m = pm.loaded_module(self.module)
        if m.generation != self._generation:
            # Forked or re-initialised since: the old handles mean nothing now. Never close
            # them: the numbers may already belong to someone else's new session.
            self._session = None
            self._handles.clear()
            self._generation = m.generation
        if self._session is None:
            self._session = self._login(self._token(m, rescan_if_missing=True))
        return self._session

    def _login(self, token: Any) -> Any:
        if self._pin is None:
            raise PermissionDenied(f"{self.describe()}: no PIN (add pin-source=file:… to the key URI)")
        if self._pin_refused:
            raise PermissionDenied(f"{self.describe()}: the token refused this PIN before; "
                                   "not trying it again (fix the PIN and restart)")
        try:
            session = token.open(rw=True, user_pin=self._pin)
        except p11e.UserAlreadyLoggedIn:
            # Another session of this process logged in already (login is per application).
            session = token.open(rw=True)
        self._logged_in_once = True
        return session

    def _token(self, m: pm.LoadedModule, *, rescan_if_missing: bool) -> Any:
        matches = self._matching_tokens(m)
        # Rescan when the token is not there: it may have been made since the module loaded, or (SoftHSM) another
        # process was rewriting the token's files while this one read them, which hides the token for a moment.
        for pause in (0.0, 0.05, 0.2) if rescan_if_missing else ():
            if matches:
                break
            time.sleep(pause)
            m = pm.rescan(self.module)
            self._generation = m.generation
            matches = self._matching_tokens(m)
        if len(matches) == 1:
            return matches[0]
        if not matches:
            labels = sorted({t.label for t in self._all_tokens(m) if t.label})
            raise KeyNotFound(f"no token matches {self.selector} in {self.module} "
                              f"(tokens: {', '.join(labels) or 'none'})")
        raise KeyNotFound(f"{len(matches)} tokens match {self.selector} in {self.module}; "
                          "add serial=… to the key URI")

    def _matching_tokens(self, m: pm.LoadedModule) -> list[Any]:
        return [t for t in self._all_tokens(m) if self.selector.matches(t.slot, t)]

    @staticmethod
    def _all_tokens(m: pm.LoadedModule) -> list[Any]:
        tokens = []
        for slot in m.lib.get_slots(token_present=True):
            try:
                tokens.append(slot.get_token())
            except (p11e.TokenNotPresent, p11e.TokenNotRecognised, p11e.GeneralError):
                # GeneralError: SoftHSM's answer for a token another process deleted since
                # this one loaded the module. Another slot's trouble is not ours.
                continue
        return tokens

    def _drop(self, *, reinitialize: bool) -> None:
        self._session = None
        self._handles.clear()
        if reinitialize:
            m = pm.rescan(self.module)
            self._generation = m.generation


def _probe(session: Any) -> None:
    """The cheapest call that needs a live session, and one without operation state."""
    try:
        session.generate_random(64)
    except p11e.FunctionNotSupported:
        pass
