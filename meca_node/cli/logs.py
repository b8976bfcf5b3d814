"""Logging: structlog over the standard library; pretty on a terminal, JSON lines otherwise,
and optionally JSON lines to a size-rotated file as well (machines without journald)."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

import structlog


def setup_logging(level: str = "info", json_logs: bool | None = None,
                  log_file: Path | None = None, max_bytes: int = 10 * 1024 * 1024,
                  backups: int = 5) -> None:
    """Log to stderr (JSON unless ``json_logs`` is false or stderr is a terminal) and, with
    ``log_file``, as JSON lines to that file too, rotated once it reaches ``max_bytes``
    (``backups`` old files kept as ``.1`` .. ``.N``). Raises OSError when the file cannot be
    opened."""
    if json_logs is None:
        json_logs = not sys.stderr.isatty()
    renderer = (structlog.processors.JSONRenderer() if json_logs
                else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    shared = [structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
              structlog.processors.TimeStamper(fmt="iso", utc=True)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processor=renderer, foreign_pre_chain=shared))
    handlers: list[logging.Handler] = [handler]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=max(1, max_bytes), backupCount=max(1, backups),
            encoding="utf-8")
        to_file.setFormatter(structlog.stdlib.ProcessorFormatter(
            processor=structlog.processors.JSONRenderer(), foreign_pre_chain=shared))
        handlers.append(to_file)
    root = logging.getLogger()
    for old in root.handlers:
        if old not in handlers:
            old.close()
    root.handlers[:] = handlers
    root.setLevel(level.upper())
    # py-libp2p logs routine network churn at WARNING; keep it quiet unless debugging
    logging.getLogger("libp2p").setLevel("DEBUG" if level.lower() == "debug" else "CRITICAL")
    logging.getLogger("zeroconf").setLevel("WARNING" if level.lower() == "debug" else "ERROR")
    logging.getLogger("httpx").setLevel("WARNING")
    logging.getLogger("multiaddr").setLevel("WARNING")
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True)
