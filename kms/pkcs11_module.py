"""PKCS#11 modules in this process: loading, the one lock, fork safety, error classification.

SoftHSM (and more than one vendor module) corrupts its state when two threads call in at once,
so every PKCS#11 call in the process runs under one lock; throughput comes from processes. A
module initialised before a fork is unusable in the child (PKCS#11 v2.40 §6.7.1), so the pid is
recorded and a child re-initialises before its first call; the `generation` number tells every
session opened before that (or before a rescan) that it is gone.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import pkcs11
from pkcs11 import exceptions as p11e

from kms.errors import (
    BackendUnavailable,
    KMSError,
    PermissionDenied,
    UnsupportedAlgorithm,
)

log = logging.getLogger(__name__)

MODULE_ENV = "HSMCA_PKCS11_MODULE"
DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
_MULTIARCH_SOFTHSM = "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"

_lock = threading.RLock()


def lock() -> threading.RLock:
    """The process-wide PKCS#11 lock. Take it with `with lock():`; never cache the object
    (a forked child gets a fresh one)."""
    return _lock


def _before_fork() -> None:
    # No PKCS#11 call is half-way through when the child's copy of the module is taken.
    _lock.acquire()


def _after_fork_in_parent() -> None:
    _lock.release()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


def module_path(uri_module_path: str | None = None) -> str:
    """The URI's module-path, else $HSMCA_PKCS11_MODULE, else SoftHSM's usual place."""
    if uri_module_path:
        return uri_module_path
    env = os.environ.get(MODULE_ENV)
    if env:
        return env
    if not os.path.exists(DEFAULT_MODULE) and os.path.exists(_MULTIARCH_SOFTHSM):
        return _MULTIARCH_SOFTHSM
    return DEFAULT_MODULE


@dataclass
class LoadedModule:
    path: str
    lib: Any  # pkcs11.lib: python-pkcs11 keeps one per path per process
    pid: int
    generation: int


_modules: dict[str, LoadedModule] = {}
_generations = itertools.count(1)


def loaded_module(path: str) -> LoadedModule:
    """The module at `path`, initialised for this process. Call with `lock()` held."""
    m = _modules.get(path)
    if m is None:
        if not os.path.isfile(path):
            raise BackendUnavailable(f"PKCS#11 module {path} not found (install it, or set "
                                     f"module-path in the key URI or ${MODULE_ENV})")
        try:
            lib = pkcs11.lib(path)
        except p11e.PKCS11Error as exc:
            raise BackendUnavailable(f"cannot load PKCS#11 module {path}: {error_name(exc)}") from exc
        m = LoadedModule(path, lib, os.getpid(), next(_generations))
        _modules[path] = m
    elif m.pid != os.getpid():
        log.info("pid changed since %s was initialised (forked worker): re-initialising", path)
        _reinitialize(m)
    return m


def is_current(path: str, generation: int) -> bool:
    """Whether sessions opened in `generation` of the module are still this process's own."""
    m = _modules.get(path)
    return m is not None and m.generation == generation and m.pid == os.getpid()


def rescan(path: str) -> LoadedModule:
    """Re-initialise the module so it sees tokens created since (SoftHSM scans only at
    C_Initialize). Every session on this module is invalidated. Call with `lock()` held."""
    m = loaded_module(path)
    _reinitialize(m)
    return m


def _reinitialize(m: LoadedModule) -> None:
    try:
        m.lib.reinitialize()
    except p11e.PKCS11Error:
        # C_Finalize failed (e.g. the module already reset itself on fork); start afresh.
        try:
            m.lib.initialize()
        except p11e.PKCS11Error as exc:
            raise BackendUnavailable(f"cannot initialise PKCS#11 module {m.path}: "
                                     f"{error_name(exc)}") from exc
    m.pid = os.getpid()
    m.generation = next(_generations)


# What python-pkcs11 raises when the session (or the whole module state) is gone: re-open,
# log in again, look the key up again, retry once.
LOST_SESSION: tuple[type[p11e.PKCS11Error], ...] = (
    p11e.SessionHandleInvalid, p11e.SessionClosed, p11e.DeviceError, p11e.DeviceRemoved,
    p11e.TokenNotPresent, p11e.UserNotLoggedIn, p11e.ObjectHandleInvalid, p11e.KeyHandleInvalid,
)
PIN_REFUSED: tuple[type[p11e.PKCS11Error], ...] = (
    p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange, p11e.PinLocked, p11e.PinExpired,
    p11e.UserPinNotInitialized,
)
_UNSUPPORTED: tuple[type[p11e.PKCS11Error], ...] = (
    p11e.MechanismInvalid, p11e.MechanismParamInvalid, p11e.KeyTypeInconsistent,
    p11e.FunctionNotSupported, p11e.KeySizeRange, p11e.DomainParamsInvalid,
)
_TRANSIENT: tuple[type[p11e.PKCS11Error], ...] = (
    p11e.DeviceMemory, p11e.HostMemory, p11e.SessionCount, p11e.TokenNotRecognised,
    p11e.GeneralError,
)


def not_initialized(exc: BaseException) -> bool:
    """CKR_CRYPTOKI_NOT_INITIALIZED: python-pkcs11 has no class for it, only this message."""
    return type(exc) is p11e.PKCS11Error and "not initialized" in str(exc)


def is_lost_session(exc: BaseException) -> bool:
    return isinstance(exc, LOST_SESSION) or not_initialized(exc)


def error_name(exc: BaseException) -> str:
    """The return code's name (python-pkcs11 messages are mostly empty); never any input."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def translate(exc: p11e.PKCS11Error, failure: type[KMSError], context: str) -> KMSError:
    """The KMSError a caller sees for a PKCS#11 failure that is not (or no longer) retried."""
    code = error_name(exc)
    if isinstance(exc, p11e.PinLocked):
        return PermissionDenied(f"{context}: the token's user PIN is locked ({code})")
    if isinstance(exc, PIN_REFUSED):
        return PermissionDenied(f"{context}: the token refused the PIN ({code})")
    if isinstance(exc, _UNSUPPORTED):
        return UnsupportedAlgorithm(f"{context}: the token does not support this ({code})")
    if is_lost_session(exc) or isinstance(exc, _TRANSIENT):
        return BackendUnavailable(f"{context}: PKCS#11 device unavailable ({code})")
    return failure(f"{context}: PKCS#11 error {code}")
