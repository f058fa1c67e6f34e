"""Two `hsmca serve` replicas sharing one PostgreSQL database behind a round-robin "load balancer": an ACME
client whose requests alternate between them completes orders without a single badNonce (nonces, accounts
and orders live in the database, so no sticky sessions are needed).

The balancer is a requests session that sends every other request to the second replica while keeping the
Host header of the first, as a real load balancer keeps the name clients use.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import josepy as jose
import pytest
import requests
import sqlalchemy as sa
from acme import client, crypto_util, messages
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration import test_store
from tests.integration.acme_client import ChallengeServer, answer_http01, key_pem
from tests.integration.conftest import DevCA, Server, make_ca, openssl_verify_chain, start_server


class RoundRobin(requests.Session):
    """Alternates between the replicas' ports; records every response's problem type."""

    def __init__(self, front: int, ports: list[int]) -> None:
        super().__init__()
        self.front = front
        self.ports = itertools.cycle(ports)
        self.served_by: list[int] = []
        self.problems: list[str] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        parts = urlsplit(str(url))
        port = next(self.ports)
        kwargs["headers"] = {**(kwargs.get("headers") or {}), "Host": f"{parts.hostname}:{self.front}"}
        target = urlunsplit((parts.scheme, f"{parts.hostname}:{port}", parts.path, parts.query, parts.fragment))
        resp = super().request(str(method), target, *args, **kwargs)
        self.served_by.append(port)
        if resp.headers.get("Content-Type", "").startswith("application/problem+json"):
            self.problems.append(str(resp.json().get("type")))
        return resp


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    admin = sa.make_url(test_store.POSTGRES_URL)
    try:
        with test_store._admin(admin) as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.SQLAlchemyError as exc:
        pytest.skip(f"PostgreSQL not reachable: {str(getattr(exc, 'orig', exc)).splitlines()[0]}")
    srv = test_store.Server("postgresql", admin_url=admin)
    try:
        yield srv.new_url()
    finally:
        srv.drop_all()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[tuple[DevCA, list[Server],
                                                                                             ChallengeServer]]:
    ca = make_ca(tmp_path_factory.mktemp("replicated"))
    http01 = ChallengeServer()

    def shared(cfg: dict[str, Any]) -> None:
        cfg["db"] = {"type": "postgresql", "dataSource": postgres_url}
        cfg["authority"]["provisioners"].append({"type": "ACME", "name": "acme", "http01Port": http01.port})

    ca.edit_config(shared)
    servers: list[Server] = []
    try:
        servers.append(start_server(ca, workers=1))
        servers.append(start_server(ca, workers=1))
        yield ca, servers, http01
    finally:
        for s in servers:
            s.stop()
        http01.stop()


def test_orders_alternate_between_replicas_without_bad_nonce(
        replicas: tuple[DevCA, list[Server], ChallengeServer], tmp_path: Path) -> None:
    ca, servers, http01 = replicas
    ports = [int(urlsplit(s.url).port or 0) for s in servers]
    balancer = RoundRobin(ports[0], ports)
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    net = client.ClientNetwork(key, alg=jose.ES256, verify_ssl=str(ca.root))  # type: ignore[arg-type]
    net.session = balancer
    acme = client.ClientV2(client.ClientV2.get_directory(f"{servers[0].url}/acme/acme/directory", net), net)
    acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
    for n in range(2):
        orderr = acme.new_order(crypto_util.make_csr(key_pem(), ipaddrs=[ipaddress.ip_address("127.0.0.1")]))
        answer_http01(acme, orderr, http01)
        done = acme.poll_and_finalize(orderr, datetime.now() + timedelta(seconds=60))
        chain = tmp_path / f"chain-{n}.pem"
        chain.write_text(done.fullchain_pem)
        assert ": OK" in openssl_verify_chain(ca.root, chain)
    assert set(balancer.served_by) == set(ports) and len(balancer.served_by) > 10
    assert balancer.problems == []  # not one badNonce (nor anything else)
