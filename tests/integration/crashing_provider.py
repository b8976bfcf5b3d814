"""A provider killed between the receipt and the output, for tests only: ``python
crashing_provider.py start ...`` is ``meca-node start ...`` except that right after it has
taken a client's receipt into its ledger (stored durably), and before it releases the
output, the process SIGKILLs itself, once (a marker file in the data dir says it did)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from meca_node.cli import main
from meca_node.node import jobs

_collect = jobs.JobHost._collect_payment


async def _collect_then_die(self, *args, **kwargs) -> None:
    await _collect(self, *args, **kwargs)
    marker = Path(self.node.ledger.store.path).with_name("crashed-after-receipt")
    if not marker.exists():
        marker.write_text("killed between the receipt and the output\n")
        os.kill(os.getpid(), signal.SIGKILL)


jobs.JobHost._collect_payment = _collect_then_die  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
