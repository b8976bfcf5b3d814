"""The offers this node publishes, kept in ``<data_dir>/offers.json`` so a restarted
developer node goes on announcing them (a crash loses no published task)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from meca_node import wire
from meca_node.store.files import atomic_write

log = logging.getLogger("meca_node.store")
FILE = "offers.json"


def load_own_offers(data_dir: Path) -> list[wire.TaskOffer]:
    """Our published offers; an unreadable file is reported and moved aside, not fatal."""
    path = data_dir / FILE
    try:
        doc = json.loads(path.read_text())
        return [wire.decode_body(wire.TaskOffer, bytes.fromhex(h)) for h in doc["offers"]]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError, wire.WireError) as exc:
        aside = path.with_name(FILE + ".unreadable")
        path.replace(aside)
        log.error("%s is unreadable (%s); moved to %s; publish your tasks again", path, exc,
                  aside)
        return []


def save_own_offers(data_dir: Path, offers: list[wire.TaskOffer]) -> None:
    doc = {"version": 1, "offers": [wire.encode_body(o).hex() for o in offers]}
    atomic_write(data_dir / FILE, json.dumps(doc, indent=1).encode())
