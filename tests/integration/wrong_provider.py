"""A provider that computes wrong answers, for tests only: ``python wrong_provider.py start
...`` is ``meca-node start ...`` except that the output of every job is replaced by other
bytes *before* it signs its ResultCommit (an honest-looking commitment to a wrong result:
no fraud proof can catch it; only a replicated run can)."""

from __future__ import annotations

from meca_node.cli import main
from meca_node.node import jobs

_honest = jobs.JobHost._start_and_post


async def _wrong(self, tag, resources, body, progress) -> tuple[bytes, bytes]:
    _output, app_log = await _honest(self, tag, resources, body, progress)
    return b'{"wrong": true}', app_log


jobs.JobHost._start_and_post = _wrong  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
