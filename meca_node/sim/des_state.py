"""The simulator's state: nodes, providers, clients, tasks, jobs and their attempts.

Plain mutable records with ``__slots__`` (100,000 jobs and their attempts stay small);
the behaviour is in :mod:`meca_node.sim.des`.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from nacl.signing import SigningKey

from meca_node import wire
from meca_node.core.replicas import Commitment
from meca_node.core.reputation import Reputation
from meca_node.sim.report import FaultRecord

Envelope = wire.Envelope


class Node:
    __slots__ = ("idx", "name", "group", "role", "behaviour", "key", "pub", "peer_id",
                 "balance")

    def __init__(self, idx: int, name: str, group: str, role: str, behaviour: str,
                 key: SigningKey, balance: int) -> None:
        self.idx = idx
        self.name = name
        self.group = group
        self.role = role
        self.behaviour = behaviour
        self.key = key
        self.pub = bytes(key.verify_key)
        self.peer_id = ""
        self.balance = balance


class Provider:
    __slots__ = ("node", "idx", "gi", "rank", "price", "cpu", "mem", "gpus", "free_cpu",
                 "free_mem", "free_gpu", "running", "waiting", "alive", "epoch", "liar",
                 "tick_at", "said", "phase", "view_adv", "view_ts", "view_q", "view_free",
                 "history", "defaulters", "unreceived", "gated", "kill_fault",
                 "restart_fault", "done", "reset_at", "back_at")

    def __init__(self, node: Node, idx: int, gi: int, price: int, cpu: int, mem: int,
                 gpus: int, liar: bool, phase: int) -> None:
        self.node = node
        self.idx = idx
        self.gi = gi
        self.rank = 0
        self.price = price
        self.cpu, self.mem, self.gpus = cpu, mem, gpus
        self.free_cpu, self.free_mem, self.free_gpu = cpu, mem, gpus
        self.running: dict[Attempt, None] = {}
        self.waiting: deque[Attempt] = deque()
        self.alive = True
        self.epoch = 0
        self.liar = liar
        self.tick_at = -1
        self.said: tuple | None = None
        self.phase = phase
        self.view_adv: wire.HostAdvert | None = None
        self.view_ts = -1  # ms
        self.view_q = -1
        self.view_free = (0, 0, 0)
        self.history: deque[tuple] = deque(maxlen=8)  # (sent_us, ts_ms, advert, msg, side)
        self.defaulters: set[int] = set()
        self.unreceived: list[Envelope] = []
        self.gated = False
        self.kill_fault: FaultRecord | None = None
        self.restart_fault: FaultRecord | None = None
        self.done = 0
        self.reset_at = 0  # when its peers saw its connections close (killed)
        self.back_at = 0  # when its first advert after a restart reached the shared view

    @property
    def load(self) -> int:
        return len(self.running) + len(self.waiting)


class Client:
    __slots__ = ("node", "rep", "known", "pending", "sample", "cheat", "payments",
                 "first_receipt", "attacked", "twin_done")

    def __init__(self, node: Node, sample: bool) -> None:
        self.node = node
        self.rep = Reputation()
        self.known: dict[int, None] = {}  # providers with a score here, first scored first
        self.pending: dict[int, int] = {}
        self.sample = sample
        self.cheat = node.behaviour == "double_spender"
        self.payments = 0
        self.first_receipt: Envelope | None = None
        self.attacked = False
        self.twin_done = False


class TaskInfo:
    __slots__ = ("name", "offer", "offer_id", "developer", "cpu", "mem", "gpus", "run_us",
                 "fee", "need", "groups", "weight")

    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)


class Job:
    __slots__ = ("idx", "client", "task", "k", "submitted", "deadline", "failed", "full",
                 "att", "done", "outcome", "paid_to", "price_paid", "best", "finished",
                 "job_id", "cands", "tried", "slot_tries", "commits", "closed", "verdict",
                 "atts", "outstanding", "agreed_done", "twin", "waiting", "attempts",
                 "last_reason")

    def __init__(self, idx: int, client: Client, task: TaskInfo, k: int, now: int,
                 deadline: int, job_id: bytes) -> None:
        self.idx = idx
        self.client = client
        self.task = task
        self.k = k
        self.submitted = now
        self.deadline = deadline
        self.failed: list[int] = []
        self.full: set[int] = set()
        self.att: Attempt | None = None
        self.done = False
        self.outcome = ""
        self.paid_to: list[str] = []
        self.price_paid = 0
        self.best = 0
        self.finished: int | None = None
        self.job_id = job_id
        self.cands: list[Provider] = []
        self.tried: set[int] = set()
        self.slot_tries: list[int] = []
        self.commits: list[Commitment] = []
        self.closed = 0
        self.verdict: Any = None
        self.atts: list[Attempt] = []
        self.outstanding = 0
        self.agreed_done = False
        self.twin = False
        self.waiting = False
        self.last_reason = ""
        self.attempts = 0


class Attempt:
    __slots__ = ("job", "p", "epoch", "job_id", "dead", "ended", "commit", "receipt", "paid",
                 "slot", "sha", "sent_at", "cross", "refused")

    def __init__(self, job: Job, p: Provider, job_id: bytes, slot: int, now: int,
                 cross: bool) -> None:
        self.job = job
        self.p = p
        self.epoch = p.epoch
        self.job_id = job_id
        self.dead = False  # the client gave up on it (the provider drops it)
        self.ended = False  # its outcome is known to the client
        self.commit: Envelope | None = None
        self.receipt: Envelope | None = None
        self.paid = 0
        self.slot = slot
        self.sha = b""
        self.sent_at = now
        self.cross = cross  # placed across the last partition's sides
        self.refused = False
