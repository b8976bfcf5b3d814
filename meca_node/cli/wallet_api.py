"""The control API's ``/v1/wallet/*`` endpoints: balances, send, history, verify."""

from __future__ import annotations

from meca_node.control.server import HttpError, Request
from meca_node.core import peer_id_of, public_key_of_peer_id
from meca_node.node import Node
from meca_node.node.ledger import LedgerRefused, Overdraft


def parse_key(text: str) -> bytes:
    """A 64-hex public key or a peer id; HttpError 400 otherwise."""
    text = text.strip()
    try:
        if len(text) == 64:
            return bytes.fromhex(text)
        return public_key_of_peer_id(text)
    except ValueError:
        raise HttpError(400, f"{text!r} is neither a peer id nor a 64-hex public key") from None


def wallet_routes(node: Node) -> dict:
    ledger = node.ledger

    def key_of(request: Request) -> bytes:
        text = request.query.get("key") or request.json().get("key")
        return parse_key(str(text)) if text else node.identity.public_key

    def balance(request: Request) -> dict:
        key = key_of(request)
        seq, _ = ledger.next_entry(key)
        return {"key": key.hex(), "peer_id": peer_id_of(key), "balance": ledger.balance(key),
                "next_seq": seq, "refused": ledger.is_refused(key),
                "mine": key == node.identity.public_key,
                "unclaimed": sum(c.amount for c in ledger.chains.unclaimed(key))}

    def balances(_: Request) -> dict:
        view = ledger.view()
        view["peer_ids"] = {k: peer_id_of(bytes.fromhex(k)) for k in view["balances"]}
        return view

    async def send(request: Request) -> dict:
        body = request.json()
        to = parse_key(request.arg("to"))
        try:
            amount = int(body["amount"])
        except (KeyError, TypeError, ValueError):
            raise HttpError(400, "amount must be an integer") from None
        if amount <= 0:
            raise HttpError(400, "amount must be positive")
        memo = str(body.get("memo", ""))
        if len(memo.encode()) > 256:
            raise HttpError(400, "memo is at most 256 bytes")
        if ledger.is_refused(to):
            raise HttpError(409, f"{peer_id_of(to)} is refused: it forked its account chain")
        try:
            env = await ledger.send(to, amount, memo)
        except Overdraft as exc:
            raise HttpError(409, f"overdraft: {exc}; nothing was signed") from None
        except LedgerRefused as exc:
            raise HttpError(409, str(exc)) from None
        return {"seq": env.body.seq, "to": to.hex(), "to_peer_id": peer_id_of(to),
                "amount": amount, "memo": memo,
                "balance": ledger.balance(node.identity.public_key)}

    def history(request: Request) -> dict:
        key = key_of(request)
        return {"key": key.hex(), "peer_id": peer_id_of(key), "balance": ledger.balance(key),
                "entries": ledger.history(key)}

    async def verify(_: Request) -> dict:
        return await ledger.verify()

    return {"GET /v1/wallet/balance": balance, "GET /v1/wallet/balances": balances,
            "POST /v1/wallet/send": send, "GET /v1/wallet/history": history,
            "GET /v1/wallet/verify": verify}
