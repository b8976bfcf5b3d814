"""Fraud proofs anyone can check from the proof alone: ``check_proof``.

Two kinds (``wire.FRAUD_KINDS``), each a pair of envelopes signed by the accused account:

- ``fork``: two different entries of its account chain at one seq (``core.ledger``,
  ``check_fork_proof``); the account is refused network-wide.
- ``bad_output``: a provider's signed ``ResultCommit`` (job id, SHA-256 and size of the
  output) and its signed ``JobResult`` for the same job whose output is not that output.
  The provider signed both, so the pair proves it lied about the result a client paid for;
  clients stop choosing it. It is provable from the two envelopes when the output is inline
  (its hash and size are computed), or when it is a CID whose multihash *is* the SHA-256 of
  the whole output (a CIDv1 raw block: outputs up to one 256 KiB chunk). An output sent as a
  multi-block DAG cannot be checked without fetching it, so such a mismatch is a local fact
  of the client that saw it, not a proof (``NotProvable``).

Pure: the CID check is handed in (``raw_digest``: the SHA-256 a CID names when it is a
single raw block, else None), as ``core`` does not import ``ipfs``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from meca_node import wire
from meca_node.core.ledger import MAX_ENTRY, Fork, check_fork_proof
from meca_node.wire import Envelope, WireError

RawDigest = Callable[[str], bytes | None]


class NotProvable(ValueError):
    """A real mismatch that the two envelopes alone cannot prove to others."""


@dataclass(frozen=True, slots=True)
class BadOutput:
    """A provider proven to have delivered an output other than the one it committed to."""

    commit: Envelope
    result: Envelope

    @property
    def account(self) -> bytes:
        return self.commit.signer

    @property
    def job_id(self) -> bytes:
        return bytes(self.commit.body.job_id)

    def proof(self) -> wire.FraudProof:
        return wire.FraudProof(kind="bad_output", account=self.account,
                               first=self.commit.raw, second=self.result.raw)


def check_proof(proof: wire.FraudProof, network_id: bytes,
                raw_digest: RawDigest) -> Fork | BadOutput:
    """Verify a fraud proof of either kind on its own; ``ValueError`` if it proves nothing."""
    if proof.kind == "fork":
        return check_fork_proof(proof, network_id)
    if proof.kind == "bad_output":
        return check_bad_output(proof, network_id, raw_digest)
    raise ValueError(f"unknown fraud kind {proof.kind!r}")


def check_bad_output(proof: wire.FraudProof, network_id: bytes,
                     raw_digest: RawDigest) -> BadOutput:
    try:
        commit, result = (wire.open_envelope(raw, max_size=MAX_ENTRY)
                          for raw in (proof.first, proof.second))
    except WireError as exc:
        raise ValueError(f"an envelope of the proof is not valid: {exc}") from None
    for env in (commit, result):
        if env.net != network_id:
            raise ValueError("an envelope of the proof belongs to another network")
        if env.signer != proof.account:
            raise ValueError("an envelope of the proof is not signed by the account")
    if not isinstance(commit.body, wire.ResultCommit):
        raise ValueError(f"first must be a ResultCommit, not {commit.type}")
    if not isinstance(result.body, wire.JobResult):
        raise ValueError(f"second must be a JobResult, not {result.type}")
    if commit.body.job_id != result.body.job_id:
        raise ValueError("the commitment and the result are of different jobs")
    output_mismatch(commit.body, result.body, raw_digest)
    return BadOutput(commit, result)


def output_mismatch(commit: wire.ResultCommit, result: wire.JobResult,
                    raw_digest: RawDigest) -> str:
    """Why ``result`` provably is not the output ``commit`` names; ``ValueError`` when it is
    that output, ``NotProvable`` when only the output's data could tell."""
    if result.output_cid:
        digest = raw_digest(result.output_cid)
        if digest is None:
            raise NotProvable("the output is a multi-block DAG: only its data can show a "
                              "mismatch")
        if digest != commit.result_sha256:
            return "the output's CID names other bytes than the committed SHA-256"
        raise ValueError("the output's CID names exactly the committed output")
    out = result.output
    if len(out) != commit.size:
        return f"the output has {len(out)} bytes, the commitment says {commit.size}"
    if hashlib.sha256(out).digest() != commit.result_sha256:
        return "the output's SHA-256 is not the committed one"
    raise ValueError("the output is exactly the committed one")
