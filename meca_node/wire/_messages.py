"""The message bodies of protocol version 1 (see ``protocols/messages.cddl``).

Units: CPU in millicores (``cpu_milli``; 1500 = 1.5 CPUs), memory and disk in MiB,
money in integer smallest units, times in milliseconds since the Unix epoch.
There are no floats on the wire. Ids: job ids are 16 bytes, offer ids and hashes
32 bytes (SHA-256), keys 32 bytes (Ed25519 public keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._schema import capped

MAX_INLINE = 16 * 1024 * 1024  # job input/output carried inline (DESIGN.md caps)
MAX_REPLICAS = 16  # providers one replicated job runs on
MAX_JOB_LOG = 16 * 1024  # the app's log of one run, as the provider sends it (the tail)

JOB_REJECT_REASONS = frozenset({
    "busy", "no_fit", "price", "not_allowed", "unknown_offer", "arch", "deadline",
    "bad_request", "balance", "refused_client", "internal",
})
JOB_STAGES = frozenset({"queued", "pulling", "loading", "starting", "running"})
FRAUD_KINDS = frozenset({"fork", "bad_output"})
ROLES = frozenset({"provider", "client", "developer"})


def _nonneg(**values: int) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def _positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be > 0, got {value}")


def _length(expected: int, **values: bytes) -> None:
    for name, value in values.items():
        if len(value) != expected:
            raise ValueError(f"{name} must be {expected} bytes, got {len(value)}")


@dataclass(frozen=True, slots=True)
class Resources:
    cpu_milli: int
    mem_mib: int
    gpu_count: int

    def __post_init__(self) -> None:
        _nonneg(cpu_milli=self.cpu_milli, mem_mib=self.mem_mib, gpu_count=self.gpu_count)


@dataclass(frozen=True, slots=True)
class Gpu:
    model: str = capped(128)
    mem_mib: int = 0

    def __post_init__(self) -> None:
        _nonneg(mem_mib=self.mem_mib)


@dataclass(frozen=True, slots=True)
class Hardware:
    cpu_count: int
    cpu_model: str = capped(256)
    cpu_mhz: int = 0
    mem_mib: int = 0
    disk_mib: int = 0
    gpus: tuple[Gpu, ...] = capped(64, default=())

    def __post_init__(self) -> None:
        _nonneg(cpu_count=self.cpu_count, cpu_mhz=self.cpu_mhz, mem_mib=self.mem_mib,
                disk_mib=self.disk_mib)


@dataclass(frozen=True, slots=True)
class Environment:
    name: str = capped(64)
    score: int = 0

    def __post_init__(self) -> None:
        _nonneg(score=self.score)


@dataclass(frozen=True, slots=True)
class HostAdvert:
    """A node's signed description of itself, gossiped on ``meca/adverts/1``."""

    TYPE: ClassVar[str] = "HostAdvert"
    roles: tuple[str, ...] = capped(3)
    arch: str = capped(32)
    hardware: Hardware
    free: Resources
    price: int
    environments: tuple[Environment, ...] = capped(16)
    cached_images: tuple[str, ...] = capped(256)
    queue: int
    addrs: tuple[str, ...] = capped(16)

    def __post_init__(self) -> None:
        _nonneg(price=self.price, queue=self.queue)
        bad = set(self.roles) - ROLES
        if bad:
            raise ValueError(f"unknown role(s) {sorted(bad)}")


@dataclass(frozen=True, slots=True)
class TaskOffer:
    """A developer's signed offer of a task, gossiped on ``meca/offers/1``."""

    TYPE: ClassVar[str] = "TaskOffer"
    name: str = capped(128)
    description: str = capped(8192)
    image_cid: str = capped(128)
    arch: str = capped(32)
    resources: Resources
    environment: str = capped(64)
    fee: int
    example_input_sha256: bytes
    example_output_sha256: bytes

    def __post_init__(self) -> None:
        _nonneg(fee=self.fee)
        _length(32, example_input_sha256=self.example_input_sha256,
                example_output_sha256=self.example_output_sha256)
        if not self.name:
            raise ValueError("name must not be empty")


@dataclass(frozen=True, slots=True)
class TaskWithdraw:
    """A developer withdrawing its offer ``name`` (the offer ``offer_id`` and any older one
    of that name from the same key), gossiped on ``meca/offers/1``."""

    TYPE: ClassVar[str] = "TaskWithdraw"
    name: str = capped(128)
    offer_id: bytes

    def __post_init__(self) -> None:
        _length(32, offer_id=self.offer_id)
        if not self.name:
            raise ValueError("name must not be empty")


@dataclass(frozen=True, slots=True)
class JobRequest:
    TYPE: ClassVar[str] = "JobRequest"
    job_id: bytes
    offer_id: bytes
    input: bytes = capped(MAX_INLINE)
    input_cid: str = capped(128)  # an input over the inline cap: a UnixFS file's CID
    max_price: int
    deadline: int
    #: how many providers the client runs this job on at once (1: a plain job); with more,
    #: the client pays only the providers whose ResultCommit is in the majority
    replicas: int = 1

    def __post_init__(self) -> None:
        _length(16, job_id=self.job_id)
        _length(32, offer_id=self.offer_id)
        _nonneg(max_price=self.max_price, deadline=self.deadline)
        if not 1 <= self.replicas <= MAX_REPLICAS:
            raise ValueError(f"replicas must be 1..{MAX_REPLICAS}, got {self.replicas}")
        if self.input and self.input_cid:
            raise ValueError("give input inline or as input_cid, not both")


@dataclass(frozen=True, slots=True)
class JobAccept:
    TYPE: ClassVar[str] = "JobAccept"
    job_id: bytes
    price: int
    queue_position: int

    def __post_init__(self) -> None:
        _length(16, job_id=self.job_id)
        _nonneg(price=self.price, queue_position=self.queue_position)


@dataclass(frozen=True, slots=True)
class JobReject:
    TYPE: ClassVar[str] = "JobReject"
    job_id: bytes
    reason: str = capped(32)
    detail: str = capped(1024)

    def __post_init__(self) -> None:
        _length(16, job_id=self.job_id)
        if self.reason not in JOB_REJECT_REASONS:
            raise ValueError(f"unknown reject reason {self.reason!r}")


@dataclass(frozen=True, slots=True)
class JobProgress:
    TYPE: ClassVar[str] = "JobProgress"
    job_id: bytes
    stage: str = capped(16)
    percent: int
    detail: str = capped(256)

    def __post_init__(self) -> None:
        _length(16, job_id=self.job_id)
        if self.stage not in JOB_STAGES:
            raise ValueError(f"unknown stage {self.stage!r}")
        if not 0 <= self.percent <= 100:
            raise ValueError(f"percent must be 0..100, got {self.percent}")


@dataclass(frozen=True, slots=True)
class ResultCommit:
    """The provider's signed commitment to a result: job id, SHA-256 and size of the output."""

    TYPE: ClassVar[str] = "ResultCommit"
    job_id: bytes
    result_sha256: bytes
    size: int

    def __post_init__(self) -> None:
        # the plain case in one test (each message is checked on every seal), else each
        # rule in turn for its message; the same comparisons in the same order
        if len(self.job_id) != 16 or len(self.result_sha256) != 32 or self.size < 0:
            _length(16, job_id=self.job_id)
            _length(32, result_sha256=self.result_sha256)
            _nonneg(size=self.size)


@dataclass(frozen=True, slots=True)
class JobResult:
    """The output itself: inline bytes, or an IPFS CID when larger than the inline cap."""

    TYPE: ClassVar[str] = "JobResult"
    job_id: bytes
    output: bytes = capped(MAX_INLINE)
    output_cid: str = capped(128)
    log: bytes = capped(MAX_JOB_LOG, default=b"")  # the tail of the app's stdout/stderr during this run

    def __post_init__(self) -> None:
        _length(16, job_id=self.job_id)
        if self.output and self.output_cid:
            raise ValueError("give output inline or as output_cid, not both")


@dataclass(frozen=True, slots=True)
class PaymentRefusal:
    """The client of a replicated job refuses to pay a provider whose ResultCommit is not
    in the majority; ``commits`` are the majority's signed ResultCommit envelopes for the
    same job, the proof that this is no default."""

    TYPE: ClassVar[str] = "PaymentRefusal"
    job_id: bytes
    commits: tuple[bytes, ...] = capped(MAX_REPLICAS - 1)

    def __post_init__(self) -> None:
        _length(16, job_id=self.job_id)
        if not self.commits:
            raise ValueError("a refusal carries the majority's commitments")


@dataclass(frozen=True, slots=True)
class Receipt:
    """The payer's signed receipt for a job: an entry of the payer's account chain."""

    TYPE: ClassVar[str] = "Receipt"
    seq: int
    prev: bytes
    job_id: bytes
    offer_id: bytes
    commit: bytes = capped(4096)  # the provider-signed ResultCommit envelope, as encoded
    provider: bytes
    developer: bytes
    price: int
    fee: int

    def __post_init__(self) -> None:
        if (self.seq < 0 or self.price < 0 or self.fee < 0 or len(self.prev) != 32
                or len(self.offer_id) != 32 or len(self.provider) != 32
                or len(self.developer) != 32 or len(self.job_id) != 16):  # see ResultCommit
            _nonneg(seq=self.seq, price=self.price, fee=self.fee)
            _length(32, prev=self.prev, offer_id=self.offer_id, provider=self.provider,
                    developer=self.developer)
            _length(16, job_id=self.job_id)


@dataclass(frozen=True, slots=True)
class Transfer:
    """A payment of ``amount`` from the signer's account to ``to`` (``wallet send``): an entry
    of the payer's account chain. The payee is credited only when it signs a ``Receive``."""

    TYPE: ClassVar[str] = "Transfer"
    seq: int
    prev: bytes
    to: bytes
    amount: int
    memo: str = capped(256)

    def __post_init__(self) -> None:
        _nonneg(seq=self.seq)
        _positive(amount=self.amount)
        _length(32, prev=self.prev, to=self.to)


@dataclass(frozen=True, slots=True)
class Receive:
    """The payee's claim, signed into its own account chain, of what one payer entry pays it.

    ``source`` is SHA-256 of the payer's whole signed entry envelope (a ``Receipt`` or a
    ``Transfer``); ``payer`` and ``payer_seq`` name that entry (to fetch it); ``amount`` is
    all that entry pays this account (a Receipt's price to its provider plus its fee to its
    developer, whichever of the two this account is)."""

    TYPE: ClassVar[str] = "Receive"
    seq: int
    prev: bytes
    source: bytes
    payer: bytes
    payer_seq: int
    amount: int

    def __post_init__(self) -> None:
        if (self.seq < 0 or self.payer_seq < 0 or self.amount < 1 or len(self.prev) != 32
                or len(self.source) != 32 or len(self.payer) != 32):  # see ResultCommit
            _nonneg(seq=self.seq, payer_seq=self.payer_seq)
            _positive(amount=self.amount)
            _length(32, prev=self.prev, source=self.source, payer=self.payer)


@dataclass(frozen=True, slots=True)
class FraudProof:
    """Two signed envelopes that together prove ``account`` cheated (``kind`` says how)."""

    TYPE: ClassVar[str] = "FraudProof"
    kind: str = capped(16)
    account: bytes
    # two envelopes must fit one 64 KiB gossip message with room for the proof's own envelope
    first: bytes = capped(16384)
    second: bytes = capped(16384)

    def __post_init__(self) -> None:
        _length(32, account=self.account)
        if self.kind not in FRAUD_KINDS:
            raise ValueError(f"unknown fraud kind {self.kind!r}")


#: the most entries one ``Entries`` gossip message carries
MAX_GOSSIP_ENTRIES = 64


@dataclass(frozen=True, slots=True)
class SignedEntry:
    """One account chain entry (a Receipt, Transfer or Receive envelope, as encoded)."""

    raw: bytes = capped(16384)


@dataclass(frozen=True, slots=True)
class Entries:
    """``meca/receipts/1``: account chain entries gossiped in one message, each checked as
    if it came alone (its own signature, network and type). The sender signs the message:
    its own new entries, or entries of others it passes on (a payment handed to it in a
    job, entries announced again), so passing an entry on is never a replay."""

    TYPE: ClassVar[str] = "Entries"
    entries: tuple[SignedEntry, ...] = capped(MAX_GOSSIP_ENTRIES)

    def __post_init__(self) -> None:
        if not self.entries:
            raise ValueError("an Entries message carries at least one entry")


#: the most entries one EntryRequest asks for
MAX_ENTRY_REQUEST = 64


@dataclass(frozen=True, slots=True)
class EntryRequest:
    """``/meca/ledger/1.0.0``: ask a peer for the entries ``from_seq`` .. ``from_seq+count-1``
    of ``account``'s chain (the answer: each entry envelope it has applied, in order)."""

    TYPE: ClassVar[str] = "EntryRequest"
    account: bytes
    from_seq: int
    count: int

    def __post_init__(self) -> None:
        _length(32, account=self.account)
        _nonneg(from_seq=self.from_seq)
        if not 1 <= self.count <= MAX_ENTRY_REQUEST:
            raise ValueError(f"count must be 1..{MAX_ENTRY_REQUEST}, got {self.count}")


BODY_TYPES: tuple[type, ...] = (
    HostAdvert, TaskOffer, TaskWithdraw, JobRequest, JobAccept, JobReject, JobProgress, ResultCommit,
    JobResult, Receipt, Transfer, Receive, FraudProof, EntryRequest, PaymentRefusal, Entries,
)
#: the bodies of account chain entries (each has ``seq`` and ``prev``)
ENTRY_TYPES: tuple[type, ...] = (Receipt, Transfer, Receive)
