"""The double-spending client of meca_node/sim/double_spender.py, run as a script by
test_settlement_cluster.py (``python double_spender.py --genesis G ...``)."""

import sys

from meca_node.sim.double_spender import main

if __name__ == "__main__":
    sys.exit(main())
