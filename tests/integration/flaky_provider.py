"""A provider whose first paid job's stream breaks, for tests only: ``python
flaky_provider.py start ...`` is ``meca-node start ...`` except that the first time it has
taken a client's receipt it resets the stream instead of sending the output (a network
fault between payment and output; the node itself keeps running)."""

from __future__ import annotations

from meca_node.cli import main
from meca_node.node import jobs

_honest = jobs.JobHost._release
_broke: list[bool] = []


async def _flaky(self, stream, job_id, kept, commit) -> bool:
    if not _broke and kept.paid and commit is None:  # paid; the commitment went out
        _broke.append(True)
        await stream.reset()
        return False
    return await _honest(self, stream, job_id, kept, commit)


jobs.JobHost._release = _flaky  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
