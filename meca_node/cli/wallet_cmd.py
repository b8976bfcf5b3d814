"""``meca-node wallet balance|send|history|verify``: the node's account, through its control
API (the node signs; the key never leaves it)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from meca_node.cli import main as m

wallet_app = typer.Typer(no_args_is_help=True,
                         help="Balances and payments: this node's account chain.")
m.app.add_typer(wallet_app, name="wallet")

Key = Annotated[Optional[str], typer.Argument(
    help="peer id or 64-hex public key (default: this node's)")]


_call = m._call


@wallet_app.command("balance")
def wallet_balance(key: Key = None, data_dir: m.DataDir = None, config: m.ConfigFile = None,
                   json_out: m.JsonOut = False):
    """The balance of an account (computed from genesis and its own chain)."""
    client = m._client(data_dir, config)
    b = _call(client.get, "/v1/wallet/balance", **({"key": key} if key else {}))
    if json_out:
        m.out.print_json(data=b)
        return
    extra = []
    if b["unclaimed"]:
        extra.append(f"{b['unclaimed']} sent to it, not received yet")
    if b["refused"]:
        extra.append("REFUSED: it forked its chain")
    print(f"{b['peer_id']}  {b['balance']}" + (f"  ({'; '.join(extra)})" if extra else ""))


@wallet_app.command("send")
def wallet_send(
        key: Annotated[str, typer.Argument(help="payee: peer id or 64-hex public key")],
        amount: Annotated[int, typer.Argument(min=1, help="amount, in the smallest unit")],
        memo: Annotated[str, typer.Option("--memo", help="a note in the transfer")] = "",
        data_dir: m.DataDir = None, config: m.ConfigFile = None):
    """Pay AMOUNT to KEY: a signed Transfer in this node's chain, gossiped."""
    r = _call(m._client(data_dir, config).post, "/v1/wallet/send",
              {"to": key, "amount": amount, "memo": memo})
    print(f"sent {r['amount']} to {r['to_peer_id']} (entry {r['seq']}); "
          f"balance now {r['balance']}")


@wallet_app.command("history")
def wallet_history(key: Key = None, data_dir: m.DataDir = None, config: m.ConfigFile = None,
                   json_out: m.JsonOut = False):
    """The entries of an account's chain, oldest first."""
    client = m._client(data_dir, config)
    h = _call(client.get, "/v1/wallet/history", **({"key": key} if key else {}))
    if json_out:
        m.out.print_json(data=h)
        return
    table = Table("seq", "kind", "amount", "counterparty", "memo / job")
    for e in h["entries"]:
        if e["kind"] == "Transfer":
            row = (f"-{e['amount']}", e["to"][:16], e["memo"])
        elif e["kind"] == "Receive":
            row = (f"+{e['amount']}", e["payer"][:16], f"from its entry {e['payer_seq']}")
        else:
            row = (f"-{e['cost']}", e["provider"][:16], f"job {e['job_id']}")
        table.add_row(str(e["seq"]), e["kind"], *row)
    m.out.print(table)
    print(f"{h['peer_id']}  balance {h['balance']}")


@wallet_app.command("verify")
def wallet_verify(data_dir: m.DataDir = None, config: m.ConfigFile = None,
                  json_out: m.JsonOut = False):
    """Recompute every known chain from genesis out of the node's ledger database and report
    every fault (forks, invalid entries); exit 1 if there is one."""
    v = _call(m._client(data_dir, config).get, "/v1/wallet/verify")
    if json_out:
        m.out.print_json(data=v)
    else:
        print(f"{v.get('rows', 0)} stored rows, {v.get('accounts', 0)} accounts, "
              f"{v.get('entries', 0)} applied entries, {v.get('pending', 0)} pending")
        for fault in v["faults"]:
            print(f"FAULT {fault}")
        for key, d in v.get("differs_from_live", {}).items():
            print(f"FAULT {key[:16]}: balance {d['now']} now, {d['recomputed']} recomputed")
        if not v.get("conserved", False):
            print("FAULT the balances and outstanding payments do not add up to the supply")
        print("ok" if v["ok"] else "faults found")
    if not v["ok"]:
        raise typer.Exit(1)
