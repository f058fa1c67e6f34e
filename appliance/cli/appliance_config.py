"""The appliance's config disk (`appliance.json`) and what first boot makes of it: the firewall's outbound allowlist
and the CA's ports (nftables), time sync, the network.

The image's base firewall (packer/files/nftables.conf) drops everything both ways; the allowlist generated here may
only flush and fill the chain `allow_out` and the set `ca_ports`. Destinations are IP addresses or networks, never
names: a firewall rule resolved from DNS at boot would follow whoever answers DNS. Every entry states why it is
there, so the generated rules carry their reason as a comment an auditor can read.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress, IPvAnyInterface, field_validator, model_validator

_REASON = r"^[A-Za-z0-9 ._:/()-]{1,64}$"  # goes into an nft comment: nothing that could end the quoted string


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Outbound(_Strict):
    """One destination the CA may reach: a KMS endpoint, the database, an OIDC issuer, a syslog collector."""

    to: IPNetwork  # an address (a /32 or /128) or a network
    port: int = Field(ge=1, le=65535)
    proto: Literal["tcp", "udp"] = "tcp"
    why: str = Field(pattern=_REASON)

    @field_validator("to", mode="before")
    @classmethod
    def _network(cls, v: object) -> object:
        if isinstance(v, str):
            try:
                return ipaddress.ip_network(v, strict=True)
            except ValueError as exc:
                raise ValueError(f"{v!r} is not an IP address or network ({exc}); names are not allowed: a "
                                 "firewall rule must not depend on what DNS answers") from None
        return v


class Network(_Strict):
    """A static address; without `address`, DHCP (IPv4)."""

    address: IPvAnyInterface | None = None
    gateway: IPvAnyAddress | None = None
    dns: list[IPvAnyAddress] = Field(default_factory=list, max_length=3)


class Ports(_Strict):
    https: int = Field(default=9000, ge=1, le=65535)
    http: int = Field(default=9080, ge=1, le=65535)


class HSM(_Strict):
    """Production mode's HSM: the vendor's PKCS#11 module and a token its own tools made; the user PIN is the config
    disk's `hsm-pin.txt`. The intermediate key is made in it at first boot."""

    module: str = Field(pattern=r"^/[A-Za-z0-9._/+-]{1,255}\.so(\.[0-9]+)*$")
    token: str = Field(min_length=1, max_length=32)
    keyType: Literal["EC-P256", "EC-P384", "RSA-3072", "RSA-4096"] = "EC-P256"
    intermediateSubject: str = Field(default="CN=hsmca Intermediate CA", min_length=4, max_length=512)


class Syslog(_Strict):
    """A copy of every audit record to the SIEM over UDP (RFC 5424; the chained file on the data disk stays the
    evidence). Set in ca.json's audit.syslog at every boot, and allowed through the firewall by itself."""

    server: IPvAnyAddress
    port: int = Field(default=514, ge=1, le=65535)
    facility: int = Field(default=10, ge=0, le=23)  # 10: authpriv

    def address(self) -> str:
        host = str(self.server) if self.server.version == 4 else f"[{self.server}]"
        return f"udp://{host}:{self.port}"


class BreakGlass(_Strict):
    """The emergency console login (account `breakglass`, serial and VGA console), off unless given."""

    # A crypt(3) hash only (yescrypt, SHA-512 or SHA-256 crypt: `openssl passwd -6`, `mkpasswd -m yescrypt`):
    # the config disk never holds the password itself.
    passwordHash: str = Field(pattern=r"^\$(y|6|5)\$[./A-Za-z0-9$=]{8,200}$")


class ApplianceConfig(_Strict):
    """`appliance.json` on the config disk (label HSMCA-CONFIG)."""

    mode: Literal["production", "dev"] = "production"
    dnsNames: list[str] = Field(min_length=1, max_length=100)
    publicURL: str | None = None  # the base of CRL/OCSP URLs in certificates (default: `hsmca init`'s rule)
    network: Network = Field(default_factory=Network)
    ntp: list[IPvAnyAddress] = Field(min_length=1, max_length=4)  # time sync is not optional for a CA
    ports: Ports = Field(default_factory=Ports)
    outbound: list[Outbound] = Field(default_factory=list, max_length=256)
    breakGlass: BreakGlass | None = None
    hsm: HSM | None = None
    syslog: Syslog | None = None

    @model_validator(mode="after")
    def _production_has_an_hsm(self) -> ApplianceConfig:
        if self.mode == "production" and self.hsm is None:
            raise ValueError("production mode needs hsm (module, token): the CA's keys live in the HSM")
        return self


def shadow_with_break_glass(shadow: str, password_hash: str) -> str:
    """/etc/shadow with the `breakglass` entry's password set: bound over the read-only one for this boot only."""
    out, found = [], False
    for line in shadow.splitlines():
        fields = line.split(":")
        if fields[0] == "breakglass" and len(fields) >= 2:
            fields[1], found = password_hash, True
        out.append(":".join(fields))
    if not found:
        raise ValueError("this image has no breakglass account in /etc/shadow")
    return "\n".join(out) + "\n"


def firewall_rules(cfg: ApplianceConfig) -> str:
    """The nft script first boot loads over the base ruleset: the CA's ports and the outbound allowlist."""
    entries = [Outbound(to=ipaddress.ip_network(d), port=53, proto=p, why="DNS")
               for d in cfg.network.dns for p in ("udp", "tcp")]
    entries += [Outbound(to=ipaddress.ip_network(n), port=123, proto="udp", why="NTP")
                for n in cfg.ntp]
    if cfg.syslog is not None:
        entries.append(Outbound(to=ipaddress.ip_network(cfg.syslog.server), port=cfg.syslog.port, proto="udp",
                                why="syslog (audit copy)"))
    entries += cfg.outbound
    lines = ["flush set inet hsmca ca_ports",
             f"add element inet hsmca ca_ports {{ {cfg.ports.https}, {cfg.ports.http} }}",
             "flush chain inet hsmca allow_out"]
    for e in entries:
        family = "ip" if e.to.version == 4 else "ip6"
        lines.append(f"add rule inet hsmca allow_out {family} daddr {e.to} {e.proto} dport {e.port} accept "
                     f'comment "{e.why}"')
    return "\n".join(lines) + "\n"


def timesyncd_conf(cfg: ApplianceConfig) -> str:
    """/etc/systemd/timesyncd.conf.d/hsmca.conf: only the configured servers, never a public pool."""
    return "[Time]\nNTP=" + " ".join(map(str, cfg.ntp)) + "\nFallbackNTP=\n"


def networkd_conf(cfg: ApplianceConfig) -> str:
    """/etc/systemd/network/50-wired.network for the appliance's one wired interface."""
    net = cfg.network
    lines = ["[Match]", "Name=en*", "", "[Network]"]
    if net.address is None:
        lines.append("DHCP=ipv4")
    else:
        lines.append(f"Address={net.address}")
        if net.gateway is not None:
            lines.append(f"Gateway={net.gateway}")
    lines += [f"DNS={d}" for d in net.dns]
    lines.append("LLMNR=no\nMulticastDNS=no")
    return "\n".join(lines) + "\n"
