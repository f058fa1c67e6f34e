"""PKCS#11 modules in this process: loading, the one thread that calls them, fork safety, errors.

SoftHSM (and more than one vendor module) corrupts its state when two threads call in at once,
so every PKCS#11 call in the process runs on one thread, under one lock; throughput comes from
processes. Callers wait for that thread with a timeout (`run`): a PKCS#11 call is a blocking C
call that nothing can interrupt, so an HSM that stops answering (a network HSM, a wedged card)
would otherwise hang every request thread. While a call is overdue, new calls fail at once
instead of queueing behind it; when the module finally returns, calls go through again.
A module initialised before a fork is unusable in the child (PKCS#11 v2.40 §6.7.1), so the pid is
recorded and a child re-initialises before its first call; the `generation` number tells every
session opened before that (or before a rescan) that it is gone.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

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

DEFAULT_TIMEOUT = 10.0  # seconds a caller waits for the PKCS#11 thread (queueing included)
_lock = threading.RLock()
T = TypeVar("T")


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
    global _lock, _caller
    _lock = threading.RLock()
    _caller = None  # the parent's PKCS#11 thread does not exist here


class _Caller:
    """The one thread of this process that calls PKCS#11 (a daemon: a hung call must not block exit)."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self.busy_since: float | None = None
        self.stalled = False  # a caller gave up on the call now running: fail fast until it returns
        self.thread = threading.Thread(target=self._loop, name="pkcs11", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            fn, future = self.jobs.get()
            if not future.set_running_or_notify_cancel():
                continue  # its caller gave up waiting before it started
            with _lock:
                self.busy_since = time.monotonic()
                try:
                    result = fn()
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                finally:
                    self.busy_since, self.stalled = None, False


_caller: _Caller | None = None
_caller_guard = threading.Lock()


def run(fn: Callable[[], T], *, timeout: float, what: str) -> T:
    """`fn()` on the PKCS#11 thread; BackendUnavailable if it has not returned within `timeout`.

    Calls made from the PKCS#11 thread itself (a step of a larger operation) run inline.
    """
    global _caller
    with _caller_guard:
        if _caller is None:
            _caller = _Caller()
        caller = _caller
    if threading.current_thread() is caller.thread:
        return fn()
    since = caller.busy_since
    if since is not None and (caller.stalled or time.monotonic() - since > timeout):
        raise BackendUnavailable(f"{what}: a call into the PKCS#11 module has not returned for "
                                 f"{time.monotonic() - since:.1f} s; not waiting behind it")
    future: Future[T] = Future()
    caller.jobs.put((fn, future))
    try:
        return future.result(timeout)
    except FutureTimeout:
        if not future.cancel():
            caller.stalled = True
        raise BackendUnavailable(f"{what}: no answer from the PKCS#11 module within {timeout:g} s") from None


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
