"""A small emulator of Google Cloud KMS's v1 REST API, for tests. It is NOT Google's server.

No Cloud KMS server installs here, so hsmca's tests run Google's real client library (google-cloud-kms,
REST transport) against this: the documented URLs and JSON of cryptoKeys.create,
cryptoKeyVersions.getPublicKey, .asymmetricSign and .patch (state only), CRC32C checks both ways (int64
as decimal strings), enums as names or, when the client asks `$alt=json;enum-encoding=int`, as numbers,
and Google's error shape {"error": {"code", "message", "status"}}. Keys are made with cryptography and
kept in memory; key rings exist implicitly; there is no authentication, IAM, quota or key rotation.

Test-only switches, POST /_emulator/control with JSON (the answer is the switches' state):
`throttle: N` answers the next N API requests with 429 RESOURCE_EXHAUSTED; `corruptSignatureCrc32c:
true` spoils the next signature's checksum; `pendingSeconds: s` leaves new versions in
PENDING_GENERATION for s seconds, as real HSM key generation does.

Run: `python -m tests.emulators.gcp_kms --port N` (0: any free port); it prints `listening on HOST:PORT`.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

# name: (number in google/cloud/kms/v1/resources.proto, key kind, size or curve, hash)
ALGORITHMS: dict[str, tuple[int, str, int, str]] = {
    "RSA_SIGN_PSS_2048_SHA256": (2, "pss", 2048, "sha256"), "RSA_SIGN_PSS_3072_SHA256": (3, "pss", 3072, "sha256"),
    "RSA_SIGN_PSS_4096_SHA256": (4, "pss", 4096, "sha256"), "RSA_SIGN_PSS_4096_SHA512": (15, "pss", 4096, "sha512"),
    "RSA_SIGN_PKCS1_2048_SHA256": (5, "pkcs1", 2048, "sha256"),
    "RSA_SIGN_PKCS1_3072_SHA256": (6, "pkcs1", 3072, "sha256"),
    "RSA_SIGN_PKCS1_4096_SHA256": (7, "pkcs1", 4096, "sha256"),
    "RSA_SIGN_PKCS1_4096_SHA512": (16, "pkcs1", 4096, "sha512"),
    "EC_SIGN_P256_SHA256": (12, "ec", 256, "sha256"), "EC_SIGN_P384_SHA384": (13, "ec", 384, "sha384"),
}
NUMBERS = {name: number for name, (number, *_) in ALGORITHMS.items()}
STATES = {"ENABLED": 1, "DISABLED": 2, "PENDING_GENERATION": 5}
LEVELS = {"SOFTWARE": 1, "HSM": 2}
PURPOSES = {"ASYMMETRIC_SIGN": 5}
HASHES: dict[str, hashes.HashAlgorithm] = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(),
                                           "sha512": hashes.SHA512()}
_SEG = r"[^/:]+"
KEY_RING = rf"projects/{_SEG}/locations/{_SEG}/keyRings/{_SEG}"
VERSION = rf"{KEY_RING}/cryptoKeys/{_SEG}/cryptoKeyVersions/{_SEG}"


def crc32c(data: bytes) -> int:
    """Bit by bit, on purpose unlike the backend's table: two implementations check each other."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


class ApiError(Exception):
    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


@dataclass
class Version:
    algorithm: str
    level: str
    key: Any
    ready_at: float
    state: str = "ENABLED"

    def current_state(self) -> str:
        return "PENDING_GENERATION" if time.monotonic() < self.ready_at else self.state


@dataclass
class Emulator:
    versions: dict[str, Version] = field(default_factory=dict)
    keys: set[str] = field(default_factory=set)
    switches: dict[str, Any] = field(default_factory=lambda: {"throttle": 0, "corruptSignatureCrc32c": False,
                                                              "pendingSeconds": 0.0})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if self.switches["throttle"] > 0:
                self.switches["throttle"] -= 1
                raise ApiError(429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Cryptographic requests'.")
        if method == "POST" and (m := re.fullmatch(rf"/v1/({KEY_RING})/cryptoKeys", path)):
            return self.create(m.group(1), (query.get("cryptoKeyId") or [""])[0], body)
        if method == "GET" and (m := re.fullmatch(rf"/v1/({VERSION})/publicKey", path)):
            return self.public_key(m.group(1))
        if method == "POST" and (m := re.fullmatch(rf"/v1/({VERSION}):asymmetricSign", path)):
            return self.sign(m.group(1), body)
        if method == "PATCH" and (m := re.fullmatch(rf"/v1/({VERSION})", path)):
            return self.patch(m.group(1), query, body)
        raise ApiError(404, "NOT_FOUND", f"no method {method} {path} in this emulator")

    def create(self, ring: str, key_id: str, body: dict[str, Any]) -> dict[str, Any]:
        if not re.fullmatch(r"[a-zA-Z0-9_-]{1,63}", key_id):
            raise ApiError(400, "INVALID_ARGUMENT", f"invalid cryptoKeyId {key_id!r}")
        template = body.get("versionTemplate") or {}
        purpose, algorithm = _enum(PURPOSES, body.get("purpose")), _enum(NUMBERS, template.get("algorithm"))
        if purpose != "ASYMMETRIC_SIGN" or algorithm not in ALGORITHMS:
            raise ApiError(400, "INVALID_ARGUMENT", "only ASYMMETRIC_SIGN keys of the listed algorithms are emulated")
        name = f"{ring}/cryptoKeys/{key_id}"
        with self.lock:
            if name in self.keys:
                raise ApiError(409, "ALREADY_EXISTS", f"CryptoKey {name} already exists.")
            self.keys.add(name)
        _, kind, size, _ = ALGORITHMS[algorithm]
        key = ec.generate_private_key(ec.SECP256R1() if size == 256 else ec.SECP384R1()) if kind == "ec" \
            else rsa.generate_private_key(65537, size)
        level = _enum(LEVELS, template.get("protectionLevel")) or "SOFTWARE"
        with self.lock:
            self.versions[f"{name}/cryptoKeyVersions/1"] = Version(
                algorithm, level, key, time.monotonic() + float(self.switches["pendingSeconds"]))
        created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return {"name": name, "purpose": "ASYMMETRIC_SIGN", "createTime": created,
                "versionTemplate": {"algorithm": algorithm, "protectionLevel": level}}

    def find(self, name: str) -> Version:
        version = self.versions.get(name)
        if version is None:
            raise ApiError(404, "NOT_FOUND", f"{name} not found.")
        return version

    def usable(self, name: str) -> Version:
        version = self.find(name)
        state = version.current_state()
        if state != "ENABLED":
            raise ApiError(400, "FAILED_PRECONDITION", f"The request cannot be fulfilled. Resource {name} has "
                                                       f"value {state} in field crypto_key_version.state.")
        return version

    def public_key(self, name: str) -> dict[str, Any]:
        version = self.usable(name)
        pem = version.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        return {"pem": pem, "algorithm": version.algorithm, "pemCrc32c": str(crc32c(pem.encode())), "name": name,
                "protectionLevel": version.level}

    def sign(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        version = self.usable(name)
        _, kind, _, hash_name = ALGORITHMS[version.algorithm]
        given = body.get("digest") or {}
        if list(given) != [hash_name]:
            raise ApiError(400, "INVALID_ARGUMENT", f"the digest must be {hash_name} for {version.algorithm}")
        digest = base64.b64decode(given[hash_name].replace("-", "+").replace("_", "/"))
        if "digestCrc32c" in body and int(body["digestCrc32c"]) != crc32c(digest):
            raise ApiError(400, "INVALID_ARGUMENT", "The checksum in field digest_crc32c did not match the data "
                                                    "in field digest.")
        h = HASHES[hash_name]
        if kind == "ec":
            signature = version.key.sign(digest, ec.ECDSA(utils.Prehashed(h)))
        else:
            pad = padding.PKCS1v15() if kind == "pkcs1" else padding.PSS(padding.MGF1(h), h.digest_size)
            signature = version.key.sign(digest, pad, utils.Prehashed(h))
        checksum = crc32c(signature)
        with self.lock:
            if self.switches["corruptSignatureCrc32c"]:
                self.switches["corruptSignatureCrc32c"], checksum = False, (checksum + 1) & 0xFFFFFFFF
        return {"signature": base64.b64encode(signature).decode(), "signatureCrc32c": str(checksum),
                "verifiedDigestCrc32c": "digestCrc32c" in body, "name": name, "protectionLevel": version.level}

    def patch(self, name: str, query: dict[str, list[str]], body: dict[str, Any]) -> dict[str, Any]:
        version = self.find(name)
        if (query.get("updateMask") or [""])[0] != "state" or _enum(STATES, body.get("state")) not in (
                "ENABLED", "DISABLED"):
            raise ApiError(400, "INVALID_ARGUMENT", "this emulator updates state (ENABLED or DISABLED) only")
        version.state = str(_enum(STATES, body["state"]))
        return {"name": name, "state": version.state, "algorithm": version.algorithm,
                "protectionLevel": version.level}


def _enum(names: dict[str, int], value: Any) -> str | None:
    """Enums arrive as names or, with enum-encoding=int, as numbers."""
    if isinstance(value, int):
        return next((n for n, v in names.items() if v == value), None)
    return value if isinstance(value, str) else None


_ENUM_FIELDS = {"algorithm": NUMBERS, "protectionLevel": LEVELS, "state": STATES, "purpose": PURPOSES}


def _as_numbers(doc: Any) -> Any:
    """The answer with enum names replaced by numbers, for a client that asked enum-encoding=int."""
    if isinstance(doc, dict):
        return {k: _ENUM_FIELDS[k][v] if k in _ENUM_FIELDS and v in _ENUM_FIELDS[k] else _as_numbers(v)
                for k, v in doc.items()}
    return doc


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Google's front ends: a frozen server hangs pooled connections
    server: Server

    def do_GET(self) -> None:
        self.dispatch("GET")

    def do_POST(self) -> None:
        self.dispatch("POST")

    def do_PATCH(self) -> None:
        self.dispatch("PATCH")
    def dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            if url.path == "/_emulator/control":
                with self.server.emulator.lock:
                    self.server.emulator.switches.update(body if method == "POST" else {})
                    answer = dict(self.server.emulator.switches)
            else:
                answer = self.server.emulator.handle(method, unquote(url.path), query, body)
                if "enum-encoding=int" in (query.get("$alt") or [""])[0]:
                    answer = _as_numbers(answer)
            self.send(200, answer)
        except ApiError as exc:
            self.send(exc.code, {"error": {"code": exc.code, "message": exc.message, "status": exc.status}})
        except (ValueError, KeyError, TypeError) as exc:
            self.send(400, {"error": {"code": 400, "message": f"bad request: {exc}", "status": "INVALID_ARGUMENT"}})

    def send(self, code: int, doc: dict[str, Any]) -> None:
        data = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: stdout carries only the port line
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.emulator = Emulator()


def start_in_thread(port: int = 0) -> Server:
    """In-process use (no SIGSTOP then): the server runs in a daemon thread; .shutdown() stops it."""
    server = Server(port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free one)")
    server = Server(parser.parse_args(argv).port)
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
