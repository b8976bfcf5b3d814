"""Wire formats: canonical CBOR, signed envelopes, message bodies, genesis, caps.

Pure and synchronous: no I/O. Every decoder raises only :class:`WireError`.
"""

from ._caps import Caps, GiB, KiB, MiB
from ._cbor import decode as cbor_decode
from ._cbor import encode as cbor_encode
from ._envelope import (
    BODY_VERSION, ENVELOPE_VERSION, Envelope, decode_body, encode_body, open_envelope, seal,
    seal_envelope, seal_with_sig, type_id,
)
from ._errors import WireError
from ._genesis import Alloc, Genesis, genesis_from_json, make_genesis
from ._messages import (
    BODY_TYPES, ENTRY_TYPES, FRAUD_KINDS, JOB_REJECT_REASONS, JOB_STAGES, MAX_ENTRY_REQUEST,
    MAX_GOSSIP_ENTRIES, MAX_JOB_LOG, MAX_REPLICAS, ROLES, Entries, EntryRequest, Environment,
    FraudProof, Gpu, Hardware,
    HostAdvert, JobAccept, JobProgress, JobReject, JobRequest, JobResult, PaymentRefusal,
    Receipt, Receive, Resources, ResultCommit, SignedEntry, TaskOffer, TaskWithdraw, Transfer,
)

TOPIC_ADVERTS = "meca/adverts/1"
TOPIC_OFFERS = "meca/offers/1"
TOPIC_RECEIPTS = "meca/receipts/1"
TOPICS = (TOPIC_ADVERTS, TOPIC_OFFERS, TOPIC_RECEIPTS)
#: which message types may travel on which gossip topic
TOPIC_TYPES: dict[str, frozenset[str]] = {
    TOPIC_ADVERTS: frozenset({"HostAdvert"}),
    TOPIC_OFFERS: frozenset({"TaskOffer", "TaskWithdraw"}),
    TOPIC_RECEIPTS: frozenset({"Receipt", "Transfer", "Receive", "FraudProof", "Entries"}),
}

__all__ = [
    "Alloc", "BODY_TYPES", "BODY_VERSION", "Caps", "ENTRY_TYPES", "ENVELOPE_VERSION",
    "Entries", "Envelope", "EntryRequest", "MAX_ENTRY_REQUEST", "MAX_GOSSIP_ENTRIES",
    "MAX_JOB_LOG", "MAX_REPLICAS",
    "PaymentRefusal",
    "Environment", "FRAUD_KINDS", "FraudProof", "Genesis", "GiB", "Gpu", "Hardware",
    "HostAdvert", "JOB_REJECT_REASONS", "JOB_STAGES", "JobAccept", "JobProgress", "JobReject",
    "JobRequest", "JobResult", "KiB", "MiB", "ROLES", "Receipt", "Receive", "Resources",
    "ResultCommit", "SignedEntry", "TOPICS", "TOPIC_ADVERTS", "TOPIC_OFFERS", "TOPIC_RECEIPTS",
    "TOPIC_TYPES",
    "TaskOffer", "TaskWithdraw", "Transfer",
    "WireError", "cbor_decode", "cbor_encode", "decode_body", "encode_body", "genesis_from_json",
    "make_genesis", "open_envelope", "seal", "seal_envelope", "seal_with_sig", "type_id",
]
