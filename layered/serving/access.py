"""Who a request is, and whether the server may answer without knowing: trusted proxies and fail-closed serving.

Identity headers (``ServeOptions.user_header`` / ``groups_header``) are only as trustworthy as
whoever set them. A client can set any header, so they count only when the TCP peer is a trusted
proxy (``trusted_proxies``: addresses or CIDR ranges; by default loopback only, i.e. a proxy on
this host). A request carrying identity headers from any other peer is refused with 403, never
served as someone else. The proxy must *replace* both headers on every request it forwards (not
append to what the client sent). uvicorn's ``X-Forwarded-For`` rewriting is off, so the peer is
the socket's, not a header's.

Fail closed: a pipeline whose index holds a restricted document (an access list other than
``["*"]``) is not served without an identity source. :func:`check_identity_source` refuses to
start unless ``user_header`` is set or ``public_only`` is (then every request is answered from
public documents only, :data:`PUBLIC_ONLY` applied inside the store query).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Sequence

from layered.errors import ConfigError
from layered.retrieval import filters
from layered.types import ACCESS_KEY, PUBLIC

#: The default trusted proxies: this host only.
LOOPBACK = ("127.0.0.1", "::1")
#: The filter of a public-only server: chunks whose access list includes ``"*"``.
PUBLIC_ONLY = filters.PUBLIC_ONLY

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(addresses: Iterable[str]) -> tuple[Network, ...]:
    """``addresses`` (IPs or CIDR ranges) as networks; a one-line :class:`ConfigError` for a bad one."""
    out = []
    for address in addresses:
        try:
            out.append(ipaddress.ip_network(str(address).strip(), strict=False))
        except ValueError:
            raise ConfigError(f"--trusted-proxy {address!r} is not an IP address or CIDR range (e.g. 10.0.0.5 or 10.0.0.0/24)") from None
    return tuple(out)


def is_trusted(peer: str | None, trusted: Sequence[Network]) -> bool:
    """Whether the TCP peer ``peer`` (an address string; None when unknown) is one of ``trusted``."""
    if not peer or not trusted:
        return False
    try:
        ip = ipaddress.ip_address(peer.split("%", 1)[0])  # an IPv6 zone index is not part of the address
    except ValueError:  # a Unix socket or other non-IP peer
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:  # a dual-stack socket's IPv4 peer
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in trusted)


def restricted_chunks(retriever: Any) -> int | None:
    """How many indexed chunks have an access list other than ``["*"]``: 0 without a retriever,
    None when the retriever cannot list its chunks (so nothing can be promised about them)."""
    if retriever is None:
        return 0
    for owner in (getattr(retriever, "store", None), retriever, getattr(retriever, "source", None)):
        chunks = getattr(owner, "chunks", None)
        if callable(chunks):
            return sum(1 for c in chunks() if list(c.metadata.get(ACCESS_KEY, [PUBLIC])) != [PUBLIC])
    return None


def check_identity_source(pipeline: Any, *, user_header: str | None, public_only: bool) -> None:
    """Refuse (one :class:`ConfigError` line) to serve restricted documents to requests of unknown identity."""
    if user_header is not None and public_only:
        raise ConfigError("--public-only and --user-header contradict each other: pass one of them")
    if user_header is not None or public_only:
        return
    restricted = restricted_chunks(getattr(pipeline, "retriever", None))
    if restricted == 0:
        return
    what = (f"the index holds {restricted} restricted chunk(s) (an access list other than ['*'])" if restricted is not None
            else f"the {type(pipeline.retriever).__name__} retriever cannot list its chunks, so they may be restricted")
    raise ConfigError(f"{what}; without an identity source every request would see them: pass --user-header X-User "
                      "(set by a proxy named with --trusted-proxy), or --public-only to serve only public documents")
