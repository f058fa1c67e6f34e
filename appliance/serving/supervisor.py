"""`hsmca serve`: prepare (schema, stale reservations, TLS certificate), then supervise children.

Children are separate interpreters (fork + exec), so nothing PKCS#11 opened here is inherited:
- https.N: `server.workers` HTTPS workers (the step API), all accepting from one listening socket that this
  process opens and hands down (a restarted worker finds the connections that queued meanwhile)
- http: the plain-HTTP listener (CA certificates, CRLs, OCSP for relying parties), server.httpWorkers processes
  on one port (SO_REUSEPORT)
- housekeeping: periodic sweeps
SIGTERM/SIGINT stop everything gracefully; SIGHUP makes every HTTPS worker reload ca.json in place.
A child that dies is restarted with backoff; one that keeps dying stops the server.
Every child gets PROMETHEUS_MULTIPROC_DIR (a fresh $HSMCA_PATH/run/metrics) in its environment
from its first instruction, so prometheus_client starts in multi-process mode in all of them and
a scrape of any listener merges every process.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from appliance import metrics
from appliance.ca.intermediates import bootstrap, own_name_problems
from appliance.config import CAConfig, ConfigError, load_config, split_address
from appliance.ra.authority import Authority
from appliance.ra.templates import load_templates
from appliance.serving.housekeeping import sweep
from appliance.serving.tls import issue_server_certificate, tls_directory
from policy import parse_duration

log = logging.getLogger("hsmca.serve")

MAX_RESTARTS = 5
RESTART_WINDOW = 60.0


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    pass_fds: tuple[int, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, pass_fds=self.pass_fds)
        log.info("started %s (pid %d)", self.name, self.proc.pid)


@dataclass(frozen=True)
class ServeOptions:
    config_path: Path
    address: str
    http_address: str
    workers: int


class StartupError(Exception):
    """The server cannot start; the message says why (in one line)."""


def bound_socket(address: str, what: str) -> socket.socket:
    """A socket bound to `address`, or a one-line reason why not (a port in use, an address not ours)."""
    host, port = split_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {address} ({what}): {exc.strerror}") from None
    return sock


def check_bindable(address: str, what: str) -> None:
    """Fail fast and clearly on a port in use (the listener's own processes bind it later)."""
    bound_socket(address, what).close()


def listening_socket(address: str) -> socket.socket:
    """The HTTPS listening socket, opened once here and inherited by every HTTPS worker."""
    sock = bound_socket(address, "HTTPS")
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def prepare(config: CAConfig, opts: ServeOptions) -> tuple[Path, Path]:
    """Everything that must hold before a request is served (the HTTPS socket is already open)."""
    check_bindable(opts.http_address, "plain HTTP")
    config.apply_kms_environment()
    authority = Authority.from_config(config)
    try:
        authority.store.migrate()
        bootstrap(config, authority.store)  # a CA made before intermediates were recorded
        active = authority.store.intermediates.active()
        if active is not None and active.certificate is not None:
            problems = own_name_problems(config, x509.load_der_x509_certificate(active.certificate))
            if problems:
                raise StartupError("; ".join(problems) + ": its HTTPS certificate could not validate. Change "
                                   "dnsNames in ca.json, or activate an intermediate whose constraints permit them")
        stale = sweep(authority.store, config.server.reservationTimeout)
        if stale:
            log.warning("resolved %d reservation(s) left by an interrupted issuance", len(stale))
        run_dir = tls_directory(config)
        return issue_server_certificate(authority, run_dir,
                                        parse_duration(config.server.tlsCertificateLifetime))
    finally:
        authority.close()


def check_config(path: Path) -> CAConfig:
    """ca.json as `hsmca serve` would load it: valid, and every certificate template compiles."""
    config = load_config(path)
    load_templates(config)
    return config


def fresh_metrics_dir(path: Path) -> Path:
    """An empty directory, mode 0700, for the children's metric files.

    Wiped at every start: files left by a previous run's processes would otherwise be summed into
    this run's counters. Private, because the files are mapped into every child's memory.
    """
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.mkdir(mode=0o700)
    path.chmod(0o700)  # whatever the umask
    return path


class Supervisor:
    def __init__(self, config: CAConfig, opts: ServeOptions, cert: Path, key: Path, metrics_dir: Path,
                 https: socket.socket):
        py = sys.executable
        cfg = str(opts.config_path)
        self.graceful = config.server.gracefulTimeout
        self.metrics_dir = metrics_dir
        env = {**os.environ, metrics.MULTIPROC_ENV: str(metrics_dir)}
        self.children = [
            *(Child(f"https.{i}", [py, "-m", "appliance.serving.https", "--config", cfg, "--fd", str(https.fileno()),
                                   "--cert", str(cert), "--key", str(key)], env, (https.fileno(),))
              for i in range(1, opts.workers + 1)),
            *(Child(f"http.{i}" if config.server.httpWorkers > 1 else "http",
                    [py, "-m", "appliance.serving.http", "--config", cfg, "--address", opts.http_address], env)
              for i in range(1, config.server.httpWorkers + 1)),  # SO_REUSEPORT: the kernel spreads connections
            Child("housekeeping", [py, "-m", "appliance.serving.housekeeping", "--config", cfg], env),
        ]
        self.stopping = False
        self.reload_asked = False
        self.config_path = opts.config_path

    def _on_term(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def _on_hup(self, signum: int, frame: Any) -> None:
        self.reload_asked = True  # checked in the main loop: loading ca.json is no work for a signal handler

    def _reload(self) -> None:
        """Pass SIGHUP on to the HTTPS workers only for a ca.json that loads (templates compiled); with a broken
        file the running workers keep serving (each also keeps its configuration if its own reload fails)."""
        self.reload_asked = False
        try:
            check_config(self.config_path)
        except (ConfigError, ValueError) as exc:
            log.error("SIGHUP ignored: ca.json cannot be loaded, the running configuration stays: %s", exc)
            return
        log.info("SIGHUP: the HTTPS workers reload ca.json")
        for c in self.children:
            if c.name.startswith("https") and c.proc and c.proc.poll() is None:
                c.proc.send_signal(signal.SIGHUP)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)
        for c in self.children:
            c.start()
        code = 0
        while not self.stopping:
            time.sleep(0.2)
            if self.reload_asked:
                self._reload()
            for c in self.children:
                if c.proc is None or c.proc.poll() is None or self.stopping:
                    continue
                log.error("%s exited with status %s", c.name, c.proc.returncode)
                now = time.monotonic()
                c.restarts = [t for t in c.restarts if now - t < RESTART_WINDOW] + [now]
                if len(c.restarts) > MAX_RESTARTS:
                    log.error("%s keeps dying; stopping the server", c.name)
                    self.stopping, code = True, 1
                    break
                metrics.reap_dead_processes(self.metrics_dir)  # its live gauges no longer count
                time.sleep(min(2 ** len(c.restarts) / 4, 10))
                c.start()
        self.shutdown()
        return code

    def shutdown(self) -> None:
        for c in self.children:
            if c.proc and c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.graceful + 5
        for c in self.children:
            if c.proc is None:
                continue
            try:
                c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", c.name)
                c.proc.kill()
                c.proc.wait()
        log.info("stopped")


def serve(config: CAConfig, opts: ServeOptions) -> int:
    with listening_socket(opts.address) as https:
        cert, key = prepare(config, opts)
        metrics_dir = fresh_metrics_dir(config.base_dir / "run" / "metrics")
        log.info("HTTPS on %s (%d workers), plain HTTP on %s (%d processes); pid %d", opts.address, opts.workers,
                 opts.http_address, config.server.httpWorkers, os.getpid())
        return Supervisor(config, opts, cert, key, metrics_dir, https).run()
