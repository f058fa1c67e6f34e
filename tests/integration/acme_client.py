"""The ACME tests' side of the protocol: a loopback http-01 responder and certbot's `acme` client, set up as
a user's client would be (an account, terms agreed)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import josepy as jose
from acme import challenges, client, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.conftest import Server, free_port


class ChallengeServer:
    """Answers /.well-known/acme-challenge/{token} from a dict, on loopback."""

    def __init__(self) -> None:
        self.answers: dict[str, str] = {}
        answers = self.answers

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                token = self.path.rsplit("/", 1)[-1]
                body = answers.get(token)
                self.send_response(200 if body else 404)
                self.end_headers()
                if body:
                    self.wfile.write(body.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = int(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def directory_url(served: Server, name: str = "acme") -> str:
    return f"{served.url}/acme/{name}/directory"


def new_client(served: Server, name: str = "acme", key: jose.JWK | None = None) -> client.ClientV2:
    key = key or jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    alg = jose.ES256 if isinstance(key, jose.JWKEC) else jose.RS256
    net = client.ClientNetwork(key, alg=alg, verify_ssl=str(served.ca.root), user_agent="hsmca-tests")  # type: ignore[arg-type]
    directory = client.ClientV2.get_directory(directory_url(served, name), net)
    acme = client.ClientV2(directory, net)
    acme.new_account(messages.NewRegistration.from_data(email="ops@acme.test", terms_of_service_agreed=True))
    return acme


def key_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def answer_http01(acme: client.ClientV2, orderr: messages.OrderResource, http01: ChallengeServer) -> None:
    for authz in orderr.authorizations:
        chall = next(c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01))
        response, validation = chall.response_and_validation(acme.net.key)
        http01.answers[chall.chall.encode("token")] = validation
        acme.answer_challenge(chall, response)


def deadline(seconds: int = 60) -> datetime:
    return datetime.now() + timedelta(seconds=seconds)
