"""The control API's ``/v1/sim/faults``: the node's fault switch, for simulations only.

``GET`` shows it (``enabled`` false on an ordinary node); ``POST`` with
``{"block": [peer ids], "delay_ms": x, "drop": share, "seed": n}`` (fields left out keep
their value; ``{"block": []}`` heals) sets it, and answers 403 unless the node was started
with ``sim_faults = true``.
"""

from __future__ import annotations

from meca_node.control.server import HttpError, Request
from meca_node.net.faults import FaultsDisabled, FaultSpecError


def sim_routes(net) -> dict:
    async def set_faults(request: Request) -> dict:
        try:
            return await net.set_faults(request.json())
        except FaultsDisabled as exc:
            raise HttpError(403, str(exc)) from None
        except FaultSpecError as exc:
            raise HttpError(400, f"bad fault setting: {exc}") from None

    return {"GET /v1/sim/faults": lambda _: net.faults_view(),
            "POST /v1/sim/faults": set_faults}
