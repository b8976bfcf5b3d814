"""setup_logging: JSON lines to a size-rotated log file besides stderr."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from meca_node.cli.logs import setup_logging


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            h.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def test_log_file_is_rotated_by_size_keeping_n_backups(tmp_path, restore_logging):
    path = tmp_path / "logs" / "node.log"  # the folder is created
    setup_logging("info", json_logs=True, log_file=path, max_bytes=2000, backups=2)
    log = logging.getLogger("meca_node.test")
    for i in range(200):
        log.info("line %d %s", i, "x" * 40)
    structlog.get_logger("meca_node.test").warning("structured", job=7)
    log.debug("not at info level")
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["node.log", "node.log.1", "node.log.2"]
    events = []
    for name in ("node.log.2", "node.log.1", "node.log"):
        text = (path.parent / name).read_text()
        assert len(text.encode()) <= 2000
        events += [json.loads(line) for line in text.splitlines()]
    assert events[-1]["event"] == "structured" and events[-1]["job"] == 7
    assert events[-1]["level"] == "warning" and "timestamp" in events[-1]
    numbers = [int(e["event"].split()[1]) for e in events[:-1]]
    assert numbers == list(range(numbers[0], 200))  # the newest lines, in order, none lost
    assert numbers[0] > 0  # the oldest went with the rotation
    assert not any("not at info level" in e["event"] for e in events)


def test_without_log_file_only_stderr(tmp_path, restore_logging):
    setup_logging("info", json_logs=True)
    assert [type(h) for h in logging.getLogger().handlers] == [logging.StreamHandler]


def test_unwritable_log_file_raises_oserror(tmp_path, restore_logging):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        setup_logging("info", log_file=blocker / "node.log")
