"""The node key encrypted under a passphrase, for backups (``meca-node key export|import``).

A backup is a small versioned JSON document::

    {"format": "meca-node-key", "version": 1,
     "peer_id": "12D3KooW...",
     "kdf": {"name": "argon2id", "opslimit": 3, "memlimit": 268435456, "salt": "<16 bytes hex>"},
     "cipher": {"name": "xsalsa20-poly1305", "nonce": "<24 bytes hex>",
                "ciphertext": "<48 bytes hex: the 32-byte seed + 16-byte tag>"}}

The secretbox key is argon2id(passphrase, salt, opslimit, memlimit); the secretbox holds the
32-byte Ed25519 seed. The peer id is in clear so a user can see whose key a file holds; it is
checked against the decrypted key. The passphrase is UTF-8 after NFC normalisation, so the same
words typed on another keyboard give the same key.

Pure: callers pass the random salt and nonce.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass

import nacl.exceptions
import nacl.pwhash.argon2id as argon2id
from nacl.secret import SecretBox

from meca_node.core.identity import Identity, public_key_of_peer_id

FORMAT = "meca-node-key"
VERSION = 1
KDF_NAME = "argon2id"
CIPHER_NAME = "xsalsa20-poly1305"
SALT_BYTES = argon2id.SALTBYTES  # 16
NONCE_BYTES = SecretBox.NONCE_SIZE  # 24
_CIPHERTEXT_BYTES = 32 + SecretBox.MACBYTES


@dataclass(frozen=True)
class KdfParams:
    """argon2id cost: passes over memory (opslimit) and memory in bytes (memlimit)."""

    opslimit: int
    memlimit: int


# libsodium's MODERATE: 3 passes over 256 MiB (about 0.6 s on a 2-core VM).
DEFAULT_KDF = KdfParams(argon2id.OPSLIMIT_MODERATE, argon2id.MEMLIMIT_MODERATE)
# A file may ask for no more than libsodium's SENSITIVE memory (1 GiB) and 16 passes, so a
# crafted file cannot make an import eat the machine.
MAX_KDF = KdfParams(16, argon2id.MEMLIMIT_SENSITIVE)
MIN_KDF = KdfParams(argon2id.OPSLIMIT_MIN, argon2id.MEMLIMIT_MIN)


class KeyBackupError(ValueError):
    """A key backup cannot be read or opened; the message says why."""


class BadKeyBackup(KeyBackupError):
    """The file is not a key backup of a known format and version, or it is damaged."""


class WrongPassphrase(KeyBackupError):
    """The passphrase does not open the backup (or the encrypted part was altered)."""


@dataclass(frozen=True)
class KeyBackup:
    peer_id: str
    kdf: KdfParams
    salt: bytes
    nonce: bytes
    ciphertext: bytes

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "version": VERSION, "peer_id": self.peer_id,
            "kdf": {"name": KDF_NAME, "opslimit": self.kdf.opslimit,
                    "memlimit": self.kdf.memlimit, "salt": self.salt.hex()},
            "cipher": {"name": CIPHER_NAME, "nonce": self.nonce.hex(),
                       "ciphertext": self.ciphertext.hex()},
        }, indent=2) + "\n"


def _secret(passphrase: str, salt: bytes, kdf: KdfParams) -> bytes:
    if not passphrase:
        raise KeyBackupError("the passphrase is empty")
    data = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    return argon2id.kdf(SecretBox.KEY_SIZE, data, salt, opslimit=kdf.opslimit,
                        memlimit=kdf.memlimit)


def _check_kdf(kdf: KdfParams) -> None:
    for name in ("opslimit", "memlimit"):
        value, low, high = (getattr(p, name) for p in (kdf, MIN_KDF, MAX_KDF))
        if type(value) is not int or not low <= value <= high:
            raise BadKeyBackup(f"kdf {name} {value!r} is outside {low}..{high}")


def seal(identity: Identity, passphrase: str, salt: bytes, nonce: bytes,
         kdf: KdfParams = DEFAULT_KDF) -> KeyBackup:
    """Encrypt ``identity``'s seed under ``passphrase`` (``salt`` and ``nonce`` random)."""
    if len(salt) != SALT_BYTES or len(nonce) != NONCE_BYTES:
        raise ValueError(f"salt is {SALT_BYTES} bytes and nonce {NONCE_BYTES}")
    _check_kdf(kdf)
    box = SecretBox(_secret(passphrase, salt, kdf))
    ciphertext = box.encrypt(identity.seed, nonce).ciphertext
    return KeyBackup(identity.peer_id, kdf, salt, nonce, ciphertext)


def unseal(backup: KeyBackup, passphrase: str) -> Identity:
    """The identity inside ``backup``; ``WrongPassphrase`` or ``BadKeyBackup`` if it will not
    open or holds another key than its peer id says."""
    _check_kdf(backup.kdf)
    box = SecretBox(_secret(passphrase, backup.salt, backup.kdf))
    try:
        seed = box.decrypt(backup.ciphertext, backup.nonce)
    except nacl.exceptions.CryptoError:
        raise WrongPassphrase("wrong passphrase (or the file's encrypted part or kdf "
                              "parameters were altered)") from None
    identity = Identity(seed)
    if identity.peer_id != backup.peer_id:
        raise BadKeyBackup(f"the file says it holds {backup.peer_id} but the key inside is "
                           f"{identity.peer_id}; the file was altered")
    return identity


def _fields(doc: object, where: str, names: set[str]) -> dict:
    if not isinstance(doc, dict):
        raise BadKeyBackup(f"{where} is not a JSON object")
    missing, extra = names - doc.keys(), doc.keys() - names
    if missing:
        raise BadKeyBackup(f"{where} lacks {', '.join(sorted(missing))}")
    if extra:
        raise BadKeyBackup(f"{where} has unknown field(s) {', '.join(sorted(extra))}")
    return doc


def _hex(doc: dict, name: str, size: int) -> bytes:
    value = doc[name]
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        raw = None
    if raw is None or len(raw) != size:
        raise BadKeyBackup(f"{name} must be {size} bytes in hex")
    return raw


def parse(data: bytes | str) -> KeyBackup:
    """Read a backup document; ``BadKeyBackup`` naming what is wrong with it."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BadKeyBackup("not a meca-node key backup (not JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BadKeyBackup(f"not a meca-node key backup (no \"format\": \"{FORMAT}\")")
    if doc.get("version") != VERSION:
        raise BadKeyBackup(f"key backup version {doc.get('version')!r} is not supported "
                           f"(this meca-node reads version {VERSION})")
    _fields(doc, "the backup", {"format", "version", "peer_id", "kdf", "cipher"})
    kdf = _fields(doc["kdf"], "kdf", {"name", "opslimit", "memlimit", "salt"})
    cipher = _fields(doc["cipher"], "cipher", {"name", "nonce", "ciphertext"})
    if kdf["name"] != KDF_NAME:
        raise BadKeyBackup(f"unknown kdf {kdf['name']!r} (expected {KDF_NAME})")
    if cipher["name"] != CIPHER_NAME:
        raise BadKeyBackup(f"unknown cipher {cipher['name']!r} (expected {CIPHER_NAME})")
    params = KdfParams(kdf["opslimit"], kdf["memlimit"])
    _check_kdf(params)
    peer_id = doc["peer_id"]
    try:
        public_key_of_peer_id(peer_id if isinstance(peer_id, str) else "")
    except ValueError:
        raise BadKeyBackup(f"peer_id {peer_id!r} is not an Ed25519 peer id") from None
    return KeyBackup(peer_id, params, _hex(kdf, "salt", SALT_BYTES),
                     _hex(cipher, "nonce", NONCE_BYTES),
                     _hex(cipher, "ciphertext", _CIPHERTEXT_BYTES))
