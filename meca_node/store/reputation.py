"""The client's provider reputation table on disk: ``<data_dir>/reputation.json``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from meca_node.core.reputation import Reputation
from meca_node.store.files import atomic_write

FILE = "reputation.json"
log = logging.getLogger("meca_node.store")


def load_reputation(data_dir: Path) -> Reputation:
    """The stored table, or an empty one. A file that does not parse is kept aside as
    ``reputation.json.bad`` (not lost) and the node starts with an empty table."""
    path = data_dir / FILE
    try:
        return Reputation.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return Reputation()
    except (ValueError, OSError) as exc:
        bad = path.with_name(FILE + ".bad")
        log.warning("%s is not a reputation table (%s); kept as %s, starting empty",
                    path, exc, bad)
        path.replace(bad)
        return Reputation()


def save_reputation(data_dir: Path, rep: Reputation) -> None:
    atomic_write(data_dir / FILE, json.dumps(rep.to_json()).encode())
