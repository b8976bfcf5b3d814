"""The encrypted key backup (core/keybackup.py): round trip and every way it must refuse."""

from __future__ import annotations

import json
import os

import pytest

from meca_node.core import Identity
from meca_node.core.keybackup import (DEFAULT_KDF, MIN_KDF, BadKeyBackup, KdfParams,
                                      KeyBackupError, WrongPassphrase, parse, seal, unseal)

# The format stores its kdf cost, so tests other than the default round trip use the minimum.
FAST = MIN_KDF
SEED = bytes(range(32))


def sealed(passphrase="correct horse", kdf=FAST) -> dict:
    backup = seal(Identity(SEED), passphrase, os.urandom(16), os.urandom(24), kdf)
    return json.loads(backup.to_json())


def test_round_trip_with_the_default_cost():
    backup = seal(Identity(SEED), "correct horse", os.urandom(16), os.urandom(24))
    doc = json.loads(backup.to_json())
    assert doc["format"] == "meca-node-key" and doc["version"] == 1
    assert doc["kdf"] == {"name": "argon2id", "opslimit": DEFAULT_KDF.opslimit,
                          "memlimit": DEFAULT_KDF.memlimit, "salt": backup.salt.hex()}
    assert doc["peer_id"] == Identity(SEED).peer_id
    assert SEED.hex() not in backup.to_json()
    assert unseal(parse(backup.to_json()), "correct horse").seed == SEED


def test_the_passphrase_is_normalised():
    doc = sealed("caf\u00e9")  # precomposed
    assert unseal(parse(json.dumps(doc)), "cafe\u0301").seed == SEED  # decomposed


def test_wrong_passphrase_is_refused():
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        unseal(parse(json.dumps(sealed())), "correct horsf")


def test_empty_passphrase_is_refused():
    with pytest.raises(KeyBackupError, match="empty"):
        seal(Identity(SEED), "", os.urandom(16), os.urandom(24), FAST)


@pytest.mark.parametrize("where,field", [("cipher", "ciphertext"), ("cipher", "nonce"),
                                         ("kdf", "salt")])
def test_tampered_bytes_do_not_open(where, field):
    doc = sealed()
    raw = bytearray.fromhex(doc[where][field])
    raw[3] ^= 1
    doc[where][field] = raw.hex()
    with pytest.raises(WrongPassphrase):
        unseal(parse(json.dumps(doc)), "correct horse")


@pytest.mark.parametrize("field,value", [("opslimit", 2), ("memlimit", 16384)])
def test_tampered_kdf_params_do_not_open(field, value):
    doc = sealed()
    doc["kdf"][field] = value
    with pytest.raises(WrongPassphrase):
        unseal(parse(json.dumps(doc)), "correct horse")


def test_a_swapped_peer_id_is_caught():
    doc = sealed()
    doc["peer_id"] = Identity(bytes(32)).peer_id
    with pytest.raises(BadKeyBackup, match="altered"):
        unseal(parse(json.dumps(doc)), "correct horse")


@pytest.mark.parametrize("field,value,message", [
    ("opslimit", 0, "outside"), ("opslimit", 10**6, "outside"),
    ("memlimit", 1 << 40, "outside"), ("memlimit", "256M", "outside"),
    ("opslimit", True, "outside"),
])
def test_kdf_params_out_of_range_are_refused_before_any_work(field, value, message):
    doc = sealed()
    doc["kdf"][field] = value
    with pytest.raises(BadKeyBackup, match=message):
        parse(json.dumps(doc))


def test_unknown_version_is_refused():
    doc = sealed()
    doc["version"] = 2
    with pytest.raises(BadKeyBackup, match="version 2 is not supported"):
        parse(json.dumps(doc))


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(format="other"), "not a meca-node key backup"),
    (lambda d: d["kdf"].update(name="scrypt"), "unknown kdf"),
    (lambda d: d["cipher"].update(name="aes"), "unknown cipher"),
    (lambda d: d["cipher"].pop("nonce"), "lacks nonce"),
    (lambda d: d.update(extra=1), "unknown field"),
    (lambda d: d["cipher"].update(nonce="zz"), "nonce must be 24 bytes"),
    (lambda d: d["cipher"].update(ciphertext="00"), "ciphertext must be 48 bytes"),
    (lambda d: d.update(peer_id="QmNotAKey"), "not an Ed25519 peer id"),
    (lambda d: d.update(kdf=[]), "kdf is not a JSON object"),
])
def test_damaged_documents_are_refused(mutate, message):
    doc = sealed()
    mutate(doc)
    with pytest.raises(BadKeyBackup, match=message):
        parse(json.dumps(doc))


@pytest.mark.parametrize("data", [b"", b"\xff\xfe", b"[1]", b"node.key\n", b"00" * 32])
def test_not_a_backup_at_all(data):
    with pytest.raises(BadKeyBackup, match="not a meca-node key backup"):
        parse(data)


def test_seal_checks_its_inputs():
    with pytest.raises(ValueError):
        seal(Identity(SEED), "pw", b"short", os.urandom(24), FAST)
    with pytest.raises(BadKeyBackup):
        seal(Identity(SEED), "pw", os.urandom(16), os.urandom(24), KdfParams(0, 8192))
