"""Shared test helpers. In CI (CI=true) a missing engine, tool or privilege fails the test."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``meca-node ARGS`` as a user would, without MECA_* settings from our environment."""
    from meca_node.sim.cluster import child_env

    return subprocess.run([sys.executable, "-m", "meca_node", *args], capture_output=True,
                          text=True, timeout=timeout, env=child_env())


def start_cli(*args: str) -> subprocess.Popen[str]:
    """``meca-node ARGS`` started in the background as by :func:`run_cli`; stderr is a pipe
    (progress lines to wait on), stdout goes to the test's output."""
    from meca_node.sim.cluster import child_env

    return subprocess.Popen([sys.executable, "-m", "meca_node", *args],
                            stderr=subprocess.PIPE, text=True, env=child_env())


def docker_engine(*base_images: str):
    """The local Docker engine with ``base_images`` present; skipped locally and failed in
    CI when either is missing."""
    from meca_node.runtime.executor import EngineUnavailable, connect

    try:
        client = connect()
    except EngineUnavailable as exc:
        require(False, str(exc))
    tags = {t for image in client.images.list() for t in (image.tags or [])}
    for base in base_images:
        require(base in tags, f"the {base} base image is missing: run scripts/base-images.sh")
    return client


def require(condition: bool, why: str) -> None:
    """Skip a test whose precondition is missing on a developer machine; fail it in CI."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI but missing: {why}")
    pytest.skip(why)


def pytest_configure(config):
    # tests/node/fakenet.py and tests/integration/netns.py are imported as plain modules
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "node"))
    sys.path.insert(0, str(Path(__file__).parent / "integration"))


def wait_for(what: str, predicate, timeout_s: float, interval_s: float = 0.2):
    """``predicate()``'s value once truthy: a bounded poll of other processes' state."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(interval_s)


# -- fixtures of the in-memory node tests (tests/node; a module's own fixture of the same
# name takes precedence). Kept here: a tests/node/conftest.py would shadow this module for
# `from conftest import ...` in other directories.
@pytest.fixture
def mock_clock():
    """Virtual time that jumps to the next deadline whenever every task waits."""
    import trio.testing

    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
def genesis():
    """A network with no balances."""
    from nacl.signing import SigningKey

    from meca_node import wire

    return wire.make_genesis("unit", SigningKey(b"\x01" * 32), 0, [])
