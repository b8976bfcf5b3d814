"""Fixtures of the node tests (a module's own fixture of the same name takes precedence)."""

from __future__ import annotations

import pytest
import trio.testing
from nacl.signing import SigningKey

from meca_node import wire


@pytest.fixture
def mock_clock():
    """Virtual time that jumps to the next deadline whenever every task waits."""
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
def genesis():
    """A network with no balances."""
    return wire.make_genesis("unit", SigningKey(b"\x01" * 32), 0, [])
