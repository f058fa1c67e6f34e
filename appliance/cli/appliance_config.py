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

from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress, IPvAnyInterface, field_validator

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


class ApplianceConfig(_Strict):
    """`appliance.json` on the config disk (label HSMCA-CONFIG)."""

    mode: Literal["production", "dev"] = "production"
    dnsNames: list[str] = Field(min_length=1, max_length=100)
    publicURL: str | None = None  # the base of CRL/OCSP URLs in certificates (default: `hsmca init`'s rule)
    network: Network = Field(default_factory=Network)
    ntp: list[IPvAnyAddress] = Field(min_length=1, max_length=4)  # time sync is not optional for a CA
    ports: Ports = Field(default_factory=Ports)
    outbound: list[Outbound] = Field(default_factory=list, max_length=256)


def firewall_rules(cfg: ApplianceConfig) -> str:
    """The nft script first boot loads over the base ruleset: the CA's ports and the outbound allowlist."""
    entries = [Outbound(to=ipaddress.ip_network(d), port=53, proto=p, why="DNS")
               for d in cfg.network.dns for p in ("udp", "tcp")]
    entries += [Outbound(to=ipaddress.ip_network(n), port=123, proto="udp", why="NTP")
                for n in cfg.ntp]
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
