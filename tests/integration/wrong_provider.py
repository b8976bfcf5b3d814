"""A provider that computes wrong answers, for tests only: ``python wrong_provider.py start
...`` is ``meca-node start ...`` except that the output of every job is replaced by other
bytes *before* it signs its ResultCommit (an honest-looking commitment to a wrong result:
no fraud proof can catch it; only a replicated run can). The patch is the simulations'
liar (meca_node/sim/actors.py)."""

from __future__ import annotations

from meca_node.cli import main
from meca_node.sim.actors import install_wrong_answers

install_wrong_answers()

if __name__ == "__main__":
    main()
