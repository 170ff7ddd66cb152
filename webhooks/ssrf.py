"""The SSRF guard: which webhook URLs and addresses waconnect may connect to.

Two halves: pure rules (:func:`check_url`, :func:`refusal`) and a resolver
(:func:`resolve`) that returns only addresses the rules allow. The URL is checked
when an endpoint is saved, and again at every delivery, where the sender
resolves the host itself and connects to the address it checked (see
:class:`webhooks.sender.GuardedBackend`): a DNS answer that changes between the
check and the connection (DNS rebinding) cannot slip a private address in,
because no second lookup happens.

Refused unless ``WACONNECT_WEBHOOKS_ALLOW_PRIVATE`` is on: loopback, private
(RFC 1918, ULA), link-local (cloud metadata at 169.254.169.254 among them),
carrier-grade NAT, multicast, reserved, unspecified addresses, and IPv6 forms
that embed one (IPv4-mapped, 6to4, NAT64 well-known prefix). A host that resolves
to several addresses is refused if any one is.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

SCHEMES = ("http", "https")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Refused(Exception):
    """The URL or the address it resolves to may not be used; the message says why."""


def _embedded(address: Address) -> Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), if any."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: Address) -> str | None:
    """Why a connection to ``address`` is refused (without the private allowance), or None."""
    inner = _embedded(address)
    if inner is not None:
        why = refusal(inner)
        return f"{why} (inside {address})" if why else None
    if address.is_loopback:
        return f"{address} is a loopback address"
    if address.is_link_local:
        return f"{address} is a link-local address"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return f"{address} is a shared (carrier-grade NAT) address"
    if address.is_private:
        return f"{address} is a private address"
    if address.is_multicast:
        return f"{address} is a multicast address"
    if address.is_unspecified or address.is_reserved:
        return f"{address} is a reserved address"
    if not address.is_global:
        return f"{address} is not a public address"
    return None


def check_address(address: Address, *, allow_private: bool) -> None:
    """Raise :class:`Refused` unless ``address`` may be connected to."""
    if address.is_multicast or address.is_unspecified:
        raise Refused(f"{address} cannot receive webhooks")
    if not allow_private:
        why = refusal(address)
        if why:
            raise Refused(why)


def check_url(url: str, *, allow_private: bool) -> tuple[str, int]:
    """The ``(host, port)`` of an acceptable webhook URL, or :class:`Refused`.

    Only ``http`` and ``https``, a host, no user info (it would be sent as a
    credential to whoever answers). A literal IP address is checked here; a host
    name at :func:`resolve` time.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Refused(f"not a valid URL: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise Refused("only http:// and https:// URLs can receive webhooks")
    host = parts.hostname
    if not host:
        raise Refused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise Refused("the URL may not carry a user name or password")
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        check_address(literal, allow_private=allow_private)
    elif not allow_private and (
        host == "localhost" or host.endswith((".localhost", ".local", ".internal"))
    ):
        raise Refused(f"{host} is a local name")
    return host, port or (443 if parts.scheme == "https" else 80)


async def resolve(host: str, port: int, *, allow_private: bool) -> list[Address]:
    """Every address ``host`` resolves to, all checked; :class:`Refused` if any is not
    allowed or there are none (an unknown name is a failed attempt, retried)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"could not resolve {host}: {exc.strerror}") from None
    addresses: list[Address] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise OSError(f"{host} has no address")
    for address in addresses:
        check_address(address, allow_private=allow_private)
    return addresses
