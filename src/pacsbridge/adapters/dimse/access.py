"""Who a calling application entity is, as a principal the use cases understand.

Rules:
1. A DIMSE peer is known by its AE title and, unless ``check_host`` is off, the address it calls
   from. AE titles are not secrets: the address check, and the network, are what make them mean
   something (see docs/threat-model.md).
2. A known peer is a principal ``ae:<TITLE>`` with its configured scopes and patients, so scopes and
   patient context apply to DIMSE exactly as to tokens. Unknown callers are refused unless the
   operator opened the door (``dimse.open_to_any_ae``), which makes every caller an operator.
3. An upstream PACS we retrieve from by C-MOVE is a supplier: its C-STOREs (from its address only) go
   into its cache and nowhere else; it has no other right here.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from ...domain.access import Principal
from ...domain.scopes import split_scope_claim


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    port: int | None
    check_host: bool
    scopes: frozenset[str]
    patient_ids: frozenset[str] | None


@dataclass(frozen=True)
class Supplier:
    """An upstream PACS that sends us the instances of our own C-MOVE requests (into its cache)."""

    ae_title: str
    host: str
    upstream: str


class PeerAccess:
    def __init__(self, peers: Sequence[Peer], open_to_any_ae: bool, suppliers: Sequence[Supplier] = ()) -> None:
        self.peers = {p.ae_title: p for p in peers}
        self.open_to_any_ae = open_to_any_ae
        self.suppliers = {s.ae_title: s for s in suppliers}

    def callers(self) -> list[str]:
        """Every AE title that may associate with us."""
        return sorted({*self.peers, *self.suppliers})

    def supplier(self, ae_title: str, address: str) -> Supplier | None:
        """The upstream whose C-MOVE results this caller delivers; its address is always checked."""
        found = self.suppliers.get(ae_title.strip())
        return found if found is not None and _same_host(found.host, address) else None

    def principal(self, ae_title: str, address: str) -> Principal | None:
        """The caller's principal; None when it may not call us from there."""
        title = ae_title.strip()
        peer = self.peers.get(title)
        if peer is None:
            return Principal(subject=f"ae:{title}", operator=True) if self.open_to_any_ae else None
        if peer.check_host and not _same_host(peer.host, address):
            return None
        return Principal(subject=f"ae:{title}", client_id=title, scopes=peer.scopes, patient_ids=peer.patient_ids)

    def destination(self, ae_title: str) -> Peer | None:
        """A C-MOVE destination: a known peer with a storage port."""
        peer = self.peers.get(ae_title.strip())
        return peer if peer is not None and peer.port else None


def peer_of(ae_title: str, host: str, port: int | None, check_host: bool, scopes: Sequence[str],
            patient_ids: Sequence[str] | None) -> Peer:
    return Peer(ae_title.strip(), host, port, check_host, split_scope_claim(" ".join(scopes)),
                frozenset(patient_ids) if patient_ids is not None else None)


def _same_host(configured: str, address: str) -> bool:
    try:
        wanted = {ipaddress.ip_address(configured)}
    except ValueError:
        try:
            wanted = {ipaddress.ip_address(info[4][0]) for info in socket.getaddrinfo(configured, None)}
        except OSError:
            return False
    try:
        caller = ipaddress.ip_address(address)
    except ValueError:
        return False
    # A dual-stack listener ("::") sees IPv4 callers as ::ffff:a.b.c.d.
    mapped = caller.ipv4_mapped if isinstance(caller, ipaddress.IPv6Address) else None
    return caller in wanted or (mapped is not None and mapped in wanted)
