"""dag-pb nodes (the IPLD codec of UnixFS): a list of links and an optional data field.

Encoded canonically as the dag-pb spec says: links first, in order, then data; each link
is Hash, then Name, then Tsize. The decoder takes the canonical form only and caps the
number of links, so a hostile block cannot make us build a huge list.
"""

from __future__ import annotations

from dataclasses import dataclass

from meca_node.ipfs.cid import CID, CidError
from meca_node.ipfs.pb import LEN, VARINT, PbError, field_bytes, field_varint, fields

#: more than any importer writes (kubo 174, Helia 1024) and than a basic directory needs
MAX_LINKS = 16384


class DagPbError(ValueError):
    """A block that is not a canonical dag-pb node."""


@dataclass(frozen=True)
class Link:
    cid: CID
    name: str | None = ""
    tsize: int | None = None


@dataclass(frozen=True)
class Node:
    links: tuple[Link, ...] = ()
    data: bytes | None = None


def encode(node: Node) -> bytes:
    out = bytearray()
    for link in node.links:
        body = field_bytes(1, bytes(link.cid))
        if link.name is not None:
            body += field_bytes(2, link.name.encode())
        if link.tsize is not None:
            body += field_varint(3, link.tsize)
        out += field_bytes(2, body)
    if node.data is not None:
        out += field_bytes(1, node.data)
    return bytes(out)


def decode(block: bytes, max_links: int = MAX_LINKS) -> Node:
    links: list[Link] = []
    data = None
    try:
        for number, wire_type, value in fields(block):
            if number == 2 and wire_type == LEN:
                if data is not None:
                    raise DagPbError("a link after the data field")
                if len(links) >= max_links:
                    raise DagPbError(f"more than {max_links} links")
                links.append(_link(value))
            elif number == 1 and wire_type == LEN:
                if data is not None:
                    raise DagPbError("two data fields")
                data = value
            else:
                raise DagPbError(f"unexpected field {number} (wire type {wire_type})")
    except PbError as exc:
        raise DagPbError(f"malformed dag-pb: {exc}") from None
    return Node(tuple(links), data)


def _link(raw: bytes) -> Link:
    cid = name = tsize = None
    last = 0
    for number, wire_type, value in fields(raw):
        if number <= last:
            raise DagPbError("link fields out of order or repeated")
        last = number
        if number == 1 and wire_type == LEN:
            try:
                cid = CID.decode(value)
            except CidError as exc:
                raise DagPbError(f"link hash: {exc}") from None
        elif number == 2 and wire_type == LEN:
            try:
                name = value.decode()
            except UnicodeDecodeError:
                raise DagPbError("link name is not UTF-8") from None
        elif number == 3 and wire_type == VARINT:
            tsize = value
        else:
            raise DagPbError(f"unexpected link field {number} (wire type {wire_type})")
    if cid is None:
        raise DagPbError("a link without a hash")
    return Link(cid, name, tsize)


def link_cids(block: bytes) -> list[CID]:
    """The CIDs a dag-pb block links to (for pinning and fetching whole DAGs)."""
    return [link.cid for link in decode(block).links]
