"""Replicated runs: which providers of a job run on ``k`` providers are paid.

A client runs one job (one job id) on ``k`` providers with distinct keys and addresses and
collects every provider's signed ResultCommit before it pays anyone. A result is *agreed*
when more than half of the ``k`` replicas committed to it (same SHA-256 and size); the
providers that committed to it are paid, the others are refused with a
``PaymentRefusal`` that carries the other providers' signed commitments.

A refusal is a proof, not a default, exactly when the commitments it shows make it
impossible for the refused provider's result to be in a majority: counting every replica
that has not shown a commitment as if it agreed with the refused provider, its result still
has fewer than ``k // 2 + 1`` votes (:func:`refusal_holds`). The client therefore refuses
only providers it can prove so; one it cannot (say a replica gave no answer in time and the
two that did differ) is paid, and the disagreement is reported rather than hidden.

Pure and synchronous: the node layer opens the envelopes and runs the streams.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from meca_node import wire


def needed(replicas: int) -> int:
    """Votes a result needs out of ``replicas`` to be agreed (a strict majority)."""
    return replicas // 2 + 1


@dataclass(frozen=True, slots=True)
class Commitment:
    """One provider's signed commitment in a replicated job."""

    provider: str  # peer id
    key: bytes  # the signer's public key
    sha256: bytes
    size: int
    raw: bytes  # the ResultCommit envelope as received (the proof for others)

    @property
    def result(self) -> tuple[bytes, int]:
        return self.sha256, self.size


@dataclass(frozen=True, slots=True)
class Verdict:
    """Who is paid and who is refused, once the commitments are in."""

    replicas: int
    agreed: tuple[bytes, int] | None  # (sha256, size) of the majority result, if one
    paid: tuple[str, ...]  # providers to pay (the majority, and any that cannot be refused)
    refused: tuple[str, ...]  # providers refused with a proof
    votes: dict[tuple[bytes, int], int]

    def proof_for(self, provider: str, commits: list[Commitment]) -> tuple[bytes, ...]:
        """The commitments that prove ``provider`` is refused: every other provider's."""
        return tuple(c.raw for c in commits if c.provider != provider)[:wire.MAX_REPLICAS - 1]


def decide(commits: list[Commitment], replicas: int) -> Verdict:
    """The verdict for ``commits`` (one per distinct provider) of a job on ``replicas``."""
    if not 1 <= replicas <= wire.MAX_REPLICAS:
        raise ValueError(f"replicas must be 1..{wire.MAX_REPLICAS}, got {replicas}")
    if len({c.provider for c in commits}) != len(commits) or len(commits) > replicas:
        raise ValueError("one commitment per provider, at most one per replica")
    votes = Counter(c.result for c in commits)
    top = max(votes.items(), key=lambda kv: (kv[1], kv[0]), default=None)
    agreed = top[0] if top is not None and top[1] >= needed(replicas) else None
    paid, refused = [], []
    for c in commits:
        if agreed is not None and c.result == agreed:
            paid.append(c.provider)
        elif refusal_holds(c.result, [o.result for o in commits if o.provider != c.provider],
                           replicas):
            refused.append(c.provider)
        else:
            paid.append(c.provider)  # we cannot prove it wrong: it is paid
    return Verdict(replicas, agreed, tuple(paid), tuple(refused), dict(votes))


def refusal_holds(own: tuple[bytes, int], shown: list[tuple[bytes, int]],
                  replicas: int) -> bool:
    """Whether ``shown`` (other replicas' results) proves ``own`` cannot be in a majority of
    ``replicas``, even if every replica not shown agreed with it."""
    unseen = replicas - 1 - len(shown)
    if unseen < 0:
        return False  # more commitments than replicas: not a proof
    return 1 + sum(r == own for r in shown) + unseen < needed(replicas)


def check_refusal(refusal: wire.PaymentRefusal, own: wire.ResultCommit, own_key: bytes,
                  replicas: int, network_id: bytes, max_size: int,
                  is_provider=lambda key: True) -> str | None:
    """Why ``refusal`` is not a valid proof against our commitment ``own`` (None: valid).
    Each commitment must be another provider's signed ResultCommit for the same job on the
    same network, one per signer, signed by a key ``is_provider`` knows as a provider."""
    if refusal.job_id != own.job_id:
        return "the refusal is for another job"
    if replicas < 2:
        return "the job was not replicated"
    signers: set[bytes] = set()
    shown = []
    for raw in refusal.commits:
        try:
            env = wire.open_envelope(raw, max_size=max_size)
        except wire.WireError as exc:
            return f"a commitment does not open: {exc}"
        body = env.body
        if env.net != network_id:
            return "a commitment is of another network"
        if not isinstance(body, wire.ResultCommit) or body.job_id != own.job_id:
            return "a commitment is not a ResultCommit of this job"
        if env.signer == own_key or env.signer in signers:
            return "two commitments from one signer (or one from us)"
        if not is_provider(env.signer):
            return "a commitment is signed by a key not known as a provider"
        signers.add(env.signer)
        shown.append((body.result_sha256, body.size))
    if not refusal_holds((own.result_sha256, own.size), shown, replicas):
        return (f"the {len(shown)} commitment(s) shown leave our result a possible majority of "
                f"{replicas}")
    return None


def distinct_hosts(peers: list[str], hosts_of) -> list[str]:
    """``peers`` in order, without any whose hosts (``hosts_of(peer)``: a set of IP
    addresses) an earlier one in the list already has: replicas of one job run on
    different machines."""
    seen: set[str] = set()
    out = []
    for peer in peers:
        mine = hosts_of(peer)
        if mine & seen:
            continue
        seen |= mine
        out.append(peer)
    return out
