"""Logging: structlog over the standard library; pretty on a terminal, JSON lines otherwise."""

from __future__ import annotations

import logging
import sys

import structlog


def setup_logging(level: str = "info", json_logs: bool | None = None) -> None:
    if json_logs is None:
        json_logs = not sys.stderr.isatty()
    renderer = (structlog.processors.JSONRenderer() if json_logs
                else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    shared = [structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
              structlog.processors.TimeStamper(fmt="iso", utc=True)]
    formatter = structlog.stdlib.ProcessorFormatter(
        processor=renderer, foreign_pre_chain=shared)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
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
