"""Is this machine offline? A ceremony refuses to run with any network interface up but loopback.

Interfaces are read from the kernel for this process's network namespace (`if_nameindex` and
the SIOCGIFFLAGS ioctl), not from /sys, which shows the namespace it was mounted in.
"""

from __future__ import annotations

import fcntl
import socket
import struct

IFF_UP, IFF_LOOPBACK = 0x1, 0x8
SIOCGIFFLAGS = 0x8913  # linux/sockios.h; no library wraps this one ioctl, so it is written here
IFNAMSIZ = 16


class NetworkUp(Exception):
    """An interface other than loopback is up; the message names it."""


def _flags(sock: socket.socket, name: str) -> int:
    request = struct.pack(f"{IFNAMSIZ}sH22x", name.encode()[:IFNAMSIZ - 1], 0)
    reply = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request)
    return int(struct.unpack(f"{IFNAMSIZ}sH22x", reply)[1])


def interfaces_up() -> list[str]:
    """Names of the interfaces that are administratively up, loopback excluded (sorted)."""
    up = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            try:
                flags = _flags(sock, name)
            except OSError:
                flags = IFF_UP  # vanished or unreadable: assume the worst
            if flags & IFF_UP and not flags & IFF_LOOPBACK:
                up.append(name)
    return sorted(up)


def require_offline(allow_network: bool) -> list[str]:
    """The interfaces up (for the transcript); raises NetworkUp unless the operator allowed it."""
    up = interfaces_up()
    if up and not allow_network:
        raise NetworkUp(f"network interface(s) up: {', '.join(up)}. A ceremony runs on an offline machine: "
                        "bring them down (ip link set DEV down) or, for a rehearsal, pass --allow-network "
                        "(the transcript will say so)")
    return up
