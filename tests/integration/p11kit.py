"""A SoftHSM token served over p11-kit's RPC (`p11-kit server` + p11-kit-client.so), as a network HSM is.

With the token behind a socket, a test can stop the "HSM" (SIGSTOP the server) while the appliance is in
the middle of a PKCS#11 call, which an in-process library cannot show: the call blocks in C until the
server answers again.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.conftest import SoftHSMToken

CLIENT_MODULES = ("/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so", "/usr/lib/pkcs11/p11-kit-client.so")


def missing() -> str | None:
    """Why p11-kit's server cannot run here, or None."""
    if shutil.which("p11-kit") is None:
        return "p11-kit is not installed (apt-get install p11-kit p11-kit-modules)"
    if client_module() is None:
        return "p11-kit-client.so is not installed (apt-get install p11-kit-modules)"
    return None


def client_module() -> str | None:
    return next((m for m in CLIENT_MODULES if os.path.exists(m)), None)


@dataclass
class P11KitServer:
    proc: subprocess.Popen[bytes]
    address: str  # the value for P11_KIT_SERVER_ADDRESS
    module: str  # p11-kit-client.so

    def freeze(self) -> None:
        """Stop the server and the `p11-kit remote` it runs for each connection (its process group)."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """The whole group (the server and every `p11-kit remote`), thawed first if a test left it frozen."""
        for sig in (signal.SIGCONT, signal.SIGTERM):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def key_uri(self, token: SoftHSMToken, obj: str, query: str = "") -> str:
        return (f"pkcs11:token={token.label};object={obj}?module-path={self.module}&pin-source=file:{token.pin_file}"
                + (f"&{query}" if query else ""))


def start(token: SoftHSMToken, tmp: Path) -> P11KitServer:
    """Serve `token` (its SoftHSM config from SOFTHSM2_CONF) on a unix socket under `tmp`."""
    sock = tmp / "p11kit.sock"
    log = (tmp / "p11kit.log").open("wb")
    proc = subprocess.Popen(["p11-kit", "server", "--foreground", "--provider", token.module, "--name", str(sock),
                             f"pkcs11:token={token.label}"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "SOFTHSM2_CONF": str(token.conf)}, start_new_session=True)
    deadline = time.monotonic() + 20
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"p11-kit server did not start: {(tmp / 'p11kit.log').read_text()}")
        time.sleep(0.05)
    module = client_module()
    assert module is not None
    return P11KitServer(proc, f"unix:path={sock}", module)
