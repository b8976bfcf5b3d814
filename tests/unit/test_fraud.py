"""Fraud proofs checked from the proof alone (core/fraud.py): bad outputs, table-driven."""

from __future__ import annotations

import hashlib

import pytest
from nacl.signing import SigningKey

from meca_node import wire
from meca_node.core.fraud import BadOutput, NotProvable, check_proof, output_mismatch
from meca_node.core.ledger import Fork
from meca_node.ipfs.cid import CID, DAG_PB, RAW
from meca_node.node.ledger import raw_cid_digest

NET = bytes([4]) * 32
PROVIDER, OTHER = SigningKey(bytes([1]) * 32), SigningKey(bytes([2]) * 32)
JOB = bytes(range(16))
OUT = b'{"answer": 42}'


def seal(body, key=PROVIDER, net=NET) -> bytes:
    nonce = hashlib.sha256(wire.encode_body(body)).digest()[:16]
    return wire.seal(body, key=key, net=net, ts=1_700_000_000_000, nonce=nonce)


def commit(data: bytes = OUT, job: bytes = JOB) -> wire.ResultCommit:
    return wire.ResultCommit(job_id=job, result_sha256=hashlib.sha256(data).digest(),
                             size=len(data))


def result(output: bytes = b"", cid: str = "", job: bytes = JOB) -> wire.JobResult:
    return wire.JobResult(job_id=job, output=output, output_cid=cid)


def proof(first: bytes, second: bytes, account=PROVIDER) -> wire.FraudProof:
    return wire.FraudProof(kind="bad_output", account=bytes(account.verify_key), first=first,
                           second=second)


RAW_OTHER = str(CID.of(b"other bytes", RAW))
RAW_SAME = str(CID.of(OUT, RAW))
DAG = str(CID.of(b"a dag-pb root", DAG_PB))


@pytest.mark.parametrize("second", [
    pytest.param(result(b'{"answer": 41}'), id="inline_other_bytes_same_size"),
    pytest.param(result(OUT + b" "), id="inline_other_size"),
    pytest.param(result(b""), id="inline_empty"),
    pytest.param(result(cid=RAW_OTHER), id="raw_cid_of_other_bytes"),
])
def test_a_provable_bad_output(second) -> None:
    c, r = seal(commit()), seal(second)
    fraud = check_proof(proof(c, r), NET, raw_cid_digest)
    assert isinstance(fraud, BadOutput)
    assert fraud.account == bytes(PROVIDER.verify_key) and fraud.job_id == JOB
    assert check_proof(fraud.proof(), NET, raw_cid_digest) == fraud


@pytest.mark.parametrize("first, second, account, why", [
    (seal(commit()), seal(result(OUT)), PROVIDER, "exactly the committed"),
    (seal(commit()), seal(result(cid=RAW_SAME)), PROVIDER, "exactly the committed"),
    (seal(commit()), seal(result(b"x"), key=OTHER), PROVIDER, "not signed by the account"),
    (seal(commit()), seal(result(b"x")), OTHER, "not signed by the account"),
    (seal(commit()), seal(result(b"x"), net=bytes(32)), PROVIDER, "another network"),
    (seal(commit(job=bytes(16))), seal(result(b"x")), PROVIDER, "different jobs"),
    (seal(result(b"x")), seal(commit()), PROVIDER, "first must be a ResultCommit"),
    (seal(commit()), seal(commit(b"y")), PROVIDER, "second must be a JobResult"),
    (b"junk", seal(result(b"x")), PROVIDER, "not valid"),
])
def test_what_proves_nothing(first, second, account, why) -> None:
    with pytest.raises(ValueError, match=why):
        check_proof(proof(first, second, account), NET, raw_cid_digest)


def test_a_dag_output_is_not_provable_from_the_envelopes() -> None:
    with pytest.raises(NotProvable, match="multi-block"):
        check_proof(proof(seal(commit()), seal(result(cid=DAG))), NET, raw_cid_digest)
    with pytest.raises(NotProvable):
        output_mismatch(commit(), result(cid="not a cid"), raw_cid_digest)


def test_fork_proofs_still_go_to_the_fork_check() -> None:
    a = seal(wire.Transfer(seq=0, prev=bytes(32), to=bytes(32), amount=1, memo="a"))
    b = seal(wire.Transfer(seq=0, prev=bytes(32), to=bytes(32), amount=1, memo="b"))
    fork = wire.FraudProof(kind="fork", account=bytes(PROVIDER.verify_key), first=a, second=b)
    assert isinstance(check_proof(fork, NET, raw_cid_digest), Fork)
