"""A provider that lies about its outputs, for tests only: ``python lying_provider.py start
...`` is ``meca-node start ...`` except that every inline ``JobResult`` it sends carries
other bytes than the output it signed its ``ResultCommit`` over (the commitment stays true;
the released output does not match it)."""

from __future__ import annotations

from meca_node import wire
from meca_node.cli import main
from meca_node.node import jobs

_honest_send = jobs.JobHost._send


async def _lying_send(self, stream, *bodies) -> None:
    bodies = tuple(
        wire.JobResult(job_id=b.job_id, output=b"not what I committed to", output_cid="")
        if isinstance(b, wire.JobResult) and b.output else b for b in bodies)
    await _honest_send(self, stream, *bodies)


jobs.JobHost._send = _lying_send  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
