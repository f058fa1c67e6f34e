"""A loopback DNS server for ACME tests, on dnslib: test names resolve to 127.0.0.1, dns-01 TXT on demand.

The validator (and lego, which looks its TXT record up before answering the challenge) must
resolve made-up names without touching the machine's resolver, so tests point them here with
`ValidationSettings(resolvers=(dns.address,))` / `--resolver` / `--dns.resolvers`.

It answers over UDP and TCP on one free port of 127.0.0.1:
- A: 127.0.0.1 (or what `set_a` gave) for every name, or only for names under `suffixes`
  (other names are NXDOMAIN); AAAA: none, so clients go to IPv4 loopback.
- TXT: the values set with `set_txt`, or through the management endpoint on loopback that hook
  scripts use (tests/integration/acme_hooks/): `POST /set-txt {"host", "value"}` adds a value,
  `POST /clear-txt {"host"[, "value"]}` removes that value or all of the host's,
  `POST /set-a {"host", "addresses": [...]}` overrides a name's A/AAAA records.
- SOA for every name that exists, so that lego's zone discovery finds something to stand on.

Use: `with AcmeDNS() as dns: ...` (test_acme_validation.py has it as a module fixture). For lego:
`--dns exec --dns.resolvers <dns.address> --dns.disable-cp` with EXEC_PATH=HOOKS/"lego_exec.sh" and
`dns.hook_env()` in its environment (lego's complete-propagation check asks the zone's NS records on
port 53, which this server does not pretend to be); for certbot: `--manual --preferred-challenges dns
--manual-auth-hook HOOKS/certbot_auth.sh --manual-cleanup-hook HOOKS/certbot_cleanup.sh`, same env.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, SOA, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

HOOKS = Path(__file__).parent / "acme_hooks"  # lego_exec.sh, certbot_auth.sh, certbot_cleanup.sh


def _key(host: str) -> str:
    return host.strip().rstrip(".").lower()


class _Zone(BaseResolver):
    """The records, shared by the UDP and TCP servers and the management endpoint."""

    def __init__(self, default_a: str | None, suffixes: Iterable[str]):
        self.default_a = default_a
        self.suffixes = tuple(_key(s) for s in suffixes)
        self.txt: dict[str, list[str]] = {}
        self.addresses: dict[str, list[str]] = {}
        self.queries: list[tuple[str, str]] = []  # (name, type) in arrival order, for assertions
        self.lock = threading.Lock()

    def exists(self, name: str) -> bool:
        if name in self.txt or name in self.addresses or not self.suffixes:
            return True
        return any(name == s or name.endswith("." + s) for s in self.suffixes)

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        qname = request.q.qname
        name, qtype = _key(str(qname)), QTYPE[request.q.qtype]
        with self.lock:
            self.queries.append((name, qtype))
            if not self.exists(name):
                reply.header.rcode = RCODE.NXDOMAIN
                return reply
            addresses = self.addresses.get(name, [self.default_a] if self.default_a else [])
            txt = list(self.txt.get(name, ()))
        if qtype in ("A", "AAAA", "ANY"):
            for text in addresses:
                ip = ipaddress.ip_address(text)
                if qtype in ("A", "ANY") and ip.version == 4:
                    reply.add_answer(RR(qname, QTYPE.A, rdata=A(text), ttl=0))
                if qtype in ("AAAA", "ANY") and ip.version == 6:
                    reply.add_answer(RR(qname, QTYPE.AAAA, rdata=AAAA(tuple(ip.packed)), ttl=0))
        if qtype in ("TXT", "ANY"):
            for value in txt:
                reply.add_answer(RR(qname, QTYPE.TXT, rdata=TXT(value), ttl=0))
        if qtype == "SOA":
            reply.add_answer(RR(qname, QTYPE.SOA, ttl=0, rdata=SOA(
                "ns.acme-dns.test.", "hostmaster.acme-dns.test.", (1, 60, 60, 60, 0))))
        return reply


class AcmeDNS:
    """The server: `.address` is "127.0.0.1:PORT" (UDP and TCP), `.management_url` the HTTP endpoint."""

    def __init__(self, default_a: str | None = "127.0.0.1", suffixes: Iterable[str] = ()):
        self.zone = _Zone(default_a, suffixes)
        self._servers: list[DNSServer] = []
        self._http: ThreadingHTTPServer | None = None
        self.port = 0

    # --- records -----------------------------------------------------------------------------

    def set_txt(self, host: str, value: str) -> None:
        with self.zone.lock:
            values = self.zone.txt.setdefault(_key(host), [])
            if value not in values:
                values.append(value)

    def clear_txt(self, host: str | None = None, value: str | None = None) -> None:
        with self.zone.lock:
            if host is None:
                self.zone.txt.clear()
            elif value is None:
                self.zone.txt.pop(_key(host), None)
            else:
                values = self.zone.txt.get(_key(host), [])
                if value in values:
                    values.remove(value)
                if not values:
                    self.zone.txt.pop(_key(host), None)

    def set_a(self, host: str, *addresses: str) -> None:
        for text in addresses:
            ipaddress.ip_address(text)  # refuse garbage here, not in the middle of an answer
        with self.zone.lock:
            self.zone.addresses[_key(host)] = list(addresses)

    def txt(self, host: str) -> list[str]:
        with self.zone.lock:
            return list(self.zone.txt.get(_key(host), ()))

    @property
    def queries(self) -> list[tuple[str, str]]:
        with self.zone.lock:
            return list(self.zone.queries)

    # --- life --------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def management_url(self) -> str:
        assert self._http is not None
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def hook_env(self) -> dict[str, str]:
        """What the hook scripts need in their environment (add it to os.environ for the client)."""
        return {"ACME_DNS_URL": self.management_url}

    def start(self) -> AcmeDNS:
        quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", logf=lambda _s: None)
        for _ in range(20):  # a free UDP port whose TCP twin is free too
            udp = DNSServer(self.zone, address="127.0.0.1", port=0, logger=quiet)
            port = int(udp.server.server_address[1])
            try:
                tcp = DNSServer(self.zone, address="127.0.0.1", port=port, tcp=True, logger=quiet)
            except OSError:
                udp.server.server_close()
                continue
            break
        else:
            raise RuntimeError("no free port for both UDP and TCP")
        self.port = port
        self._servers = [udp, tcp]
        for server in self._servers:
            server.start_thread()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _management_handler(self))
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, name="acme-dns-mgmt", daemon=True).start()
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.server.shutdown()
            server.server.server_close()
        self._servers = []
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> AcmeDNS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _management_handler(dns: AcmeDNS) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(min(length, 65536)) or b"{}")
                if self.path == "/set-txt":
                    dns.set_txt(str(body["host"]), str(body["value"]))
                elif self.path == "/clear-txt":
                    host = body.get("host")
                    dns.clear_txt(None if host is None else str(host),
                                  None if body.get("value") is None else str(body["value"]))
                elif self.path == "/set-a":
                    dns.set_a(str(body["host"]), *map(str, body["addresses"]))
                else:
                    self._answer(404, {"error": f"no {self.path}"})
                    return
            except (ValueError, KeyError, TypeError) as e:
                self._answer(400, {"error": str(e)})
                return
            self._answer(200, {"ok": True})

        def _answer(self, status: int, doc: dict[str, Any]) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
