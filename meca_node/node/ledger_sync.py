"""Missing ledger entries fetched from peers: ``/meca/ledger/1.0.0``.

Gossip loses messages (flood control, a node that was away, a partition), and an entry that
waits for an earlier one of its chain, or a Receive that waits for the payer entry it
claims, cannot be applied until those arrive. This service asks peers for them.

**Protocol.** The asker opens a stream and sends one signed ``EntryRequest`` (account,
from_seq, count <= 64); the server answers with each entry of that chain it has *applied*,
from ``from_seq`` upward without gaps, one envelope per frame (as encoded, so signatures
and hashes hold), and closes the stream; fewer or none when it has fewer. The asker checks
every entry as it would a gossiped one (signature, network, signer, seq in order) and adds
it to its ledger; a peer that answers with anything else is dropped for this request.

**Who is asked.** The account's own node first (an account key *is* a libp2p peer id), then
a hinted peer (for a Receipt handed to us in a job: that job's client), then up to ``PEERS_PER_WANT``
other connected peers, each request under ``REQUEST_TIMEOUT_S``.

**When.** ``run`` wakes whenever the ledger holds an entry it cannot apply yet (and every
``TICK_S`` while something is still missing), at most one round per ``ROUND_MIN_S``, and asks
for at most ``MAX_WANTS`` ranges a round. ``catch_up`` is the direct path a provider takes for
a Receipt handed to it in a job: it fetches the payer's missing entries at once, in batches.

**Serving** is bounded: at most ``SERVE_CONCURRENCY`` requests at a time (a stream over that
is reset), one request per stream, a request frame of at most 1 KiB read within
``REQUEST_TIMEOUT_S``.

**Re-announce.** Our own newest entries (``REANNOUNCE_LAST``) are gossiped again when a peer
connects that was not connected a round before (new, or back after a restart or a
partition), and our newest entry again when our chain grew since we last did so (each at
most once per ``REANNOUNCE_MIN_S``): an entry stored just before a crash and never gossiped
reaches the network after the restart, a peer that was away gets what we signed meanwhile,
and entries lost at the tail of a burst (flood control) show up as a gap that peers fetch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from meca_node import wire
from meca_node.core.identity import peer_id_of
from meca_node.core.ledger import MAX_ENTRY, Want, open_entry
from meca_node.node.ledger import NodeLedger
from meca_node.node.ports import Network

log = logging.getLogger("meca_node.ledger_sync")

PROTOCOL = "/meca/ledger/1.0.0"
REQUEST_TIMEOUT_S = 5.0
ROUND_MIN_S = 0.5
TICK_S = 5.0
MAX_WANTS = 16
PEERS_PER_WANT = 3
SERVE_CONCURRENCY = 8
MAX_REQUEST = 1024
REANNOUNCE_LAST = 4
REANNOUNCE_MIN_S = 10.0


class LedgerSync:
    """Serve our applied entries to peers and fetch the ones our ledger waits for."""

    def __init__(self, net: Network, ledger: NodeLedger, seal: Callable[[Any], bytes],
                 network_id: bytes) -> None:
        self.net = net
        self.ledger = ledger
        self._seal = seal
        self._network_id = network_id
        self._serving = trio.CapacityLimiter(SERVE_CONCURRENCY)
        self._seen_peers: set[str] = set()  # connected at the last round
        self._new_peers: set[str] = set()  # connected first at the last round
        self._due: set[str] = set()  # connected peers our newest entries are due to
        self._reannounced = -float("inf")
        self._head_announced = 0  # our next seq when we last re-announced our head
        self.stats = {"served": 0, "served_entries": 0, "refused": 0, "asked": 0,
                      "fetched": 0, "bad_answers": 0, "failed": 0, "reannounced": 0}

    def install(self) -> None:
        self.net.set_stream_handler(PROTOCOL, self._serve, max_frame=MAX_ENTRY)
        self.ledger.sync = self

    # -- serving ------------------------------------------------------------------------
    async def _serve(self, stream) -> None:
        try:
            self._serving.acquire_nowait()
        except trio.WouldBlock:
            self.stats["refused"] += 1
            await stream.reset()
            return
        try:
            with trio.move_on_after(REQUEST_TIMEOUT_S):
                data = await stream.receive()
                req = self._request(data)
                if req is None:
                    self.stats["refused"] += 1
                    await stream.reset()
                    return
                entries = self.ledger.chains.entries_from(req.account, req.from_seq,
                                                          req.count)
                if entries:
                    await stream.send_many([e.raw for e in entries])
                self.stats["served"] += 1
                self.stats["served_entries"] += len(entries)
            await stream.close()
        except Exception as exc:  # the asker went away: nothing of ours is at stake
            log.debug("ledger request from %s failed: %s", stream.remote_peer, exc)
            await stream.reset()
        finally:
            self._serving.release()

    def _request(self, data: bytes | None) -> wire.EntryRequest | None:
        if data is None or len(data) > MAX_REQUEST:
            return None
        try:
            env = wire.open_envelope(data, max_size=MAX_REQUEST)
        except wire.WireError:
            return None
        if env.net != self._network_id or not isinstance(env.body, wire.EntryRequest):
            return None
        return env.body

    # -- asking -------------------------------------------------------------------------
    async def fetch(self, peer: str, want: Want) -> list[wire.Envelope]:
        """Ask ``peer`` for ``want``; the entries it answered with that check out (in
        order, stopping at the first that does not)."""
        self.stats["asked"] += 1
        out: list[wire.Envelope] = []
        with trio.move_on_after(REQUEST_TIMEOUT_S):
            stream = await self.net.open_stream(peer, PROTOCOL, max_frame=MAX_ENTRY)
            try:
                await stream.send(self._seal(wire.EntryRequest(
                    account=want.account, from_seq=want.from_seq, count=want.count)))
                for i in range(want.count):
                    data = await stream.receive()
                    if data is None:
                        break
                    env = open_entry(data, self._network_id)
                    if env.signer != want.account or env.body.seq != want.from_seq + i:
                        raise wire.WireError("bad_answer", "not the entry asked for")
                    out.append(env)
            finally:
                await stream.close()
        return out

    async def _ask_around(self, want: Want, hint: str | None) -> int:
        """Ask peers in turn until one has entries; how many of them the ledger added."""
        for peer in self._peers_for(want.account, hint):
            try:
                envs = await self.fetch(peer, want)
            except wire.WireError as exc:
                self.stats["bad_answers"] += 1
                log.info("peer %s answered a ledger request wrongly: %s", peer, exc)
                continue
            except Exception as exc:  # unreachable, reset, no such protocol
                self.stats["failed"] += 1
                log.debug("ledger request to %s failed: %s", peer, exc)
                continue
            if envs:
                added = await self.ledger.add_fetched(envs)
                self.stats["fetched"] += added
                if added:
                    return added
        return 0

    def _peers_for(self, account: bytes, hint: str | None) -> list[str]:
        connected = [p.peer_id for p in self.net.connected_peers()]
        owner = peer_id_of(account)
        first = [p for p in (owner, hint) if p and p in connected]
        rest = [p for p in connected if p not in first]
        return list(dict.fromkeys(first + rest[:PEERS_PER_WANT]))

    async def catch_up(self, account: bytes, upto_seq: int, hint: str | None = None) -> None:
        """Fetch ``account``'s entries from its next seq up to ``upto_seq`` (inclusive),
        in batches, while each batch brings some (bounded by the number of batches)."""
        batches = (upto_seq + wire.MAX_ENTRY_REQUEST) // wire.MAX_ENTRY_REQUEST + 1
        for _ in range(batches):
            nxt, _prev = self.ledger.next_entry(account)
            if nxt > upto_seq or self.ledger.is_refused(account):
                return
            want = Want(account, nxt, min(upto_seq - nxt + 1, wire.MAX_ENTRY_REQUEST))
            if not await self._ask_around(want, hint):
                return

    # -- the loop -----------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run forever: fetch what the ledger waits for; re-announce our newest entries to
        peers that are new since start."""
        task_status.started()
        while True:
            with trio.move_on_after(TICK_S):
                await self.ledger.missing.wait()
            if self.ledger.missing.is_set():
                self.ledger.missing = trio.Event()
            started = trio.current_time()
            self._reannounce()
            for want in self.ledger.wants(MAX_WANTS):
                await self._ask_around(want, None)
            await trio.sleep_until(started + ROUND_MIN_S)

    def _reannounce(self) -> None:
        """Peers first seen in the previous round (their gossip subscriptions have had a
        round to arrive) get our newest entries again."""
        peers = {p.peer_id for p in self.net.connected_peers()}
        # new: not connected last round (first seen, or back after a restart or partition);
        # due: new a round ago (their subscriptions have arrived), until announced to
        self._due = (self._due | self._new_peers) & peers
        self._new_peers = peers - self._seen_peers
        self._seen_peers = peers
        now = trio.current_time()
        head = self.ledger.next_entry()[0]
        if now - self._reannounced < REANNOUNCE_MIN_S or not head:
            return
        own = self.ledger.chains.entries(self.ledger.public_key)
        if self._due:
            self._due = set()
            again = own[-REANNOUNCE_LAST:]
        elif head != self._head_announced:  # our head again: a lost tail shows as a gap
            again = own[-1:]
        else:
            return
        self._reannounced = now
        self._head_announced = head
        self.stats["reannounced"] += len(again)
        for env in again:
            self.ledger.announce(env.raw)
