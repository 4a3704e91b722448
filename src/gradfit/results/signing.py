"""Keyed signatures for saved files: HMAC-SHA256 with a key the user holds.

The SHA-256 checksum of :mod:`gradfit.results.persist` catches damage, not deliberate edits:
anyone who edits a file can recompute it. A signature can only be made with the key, so a file
edited after it was signed (checksum recomputed or not) is refused when the key is set at load
time. The key comes from ``signing_key=`` or, when that is not given, from the environment
variable ``GRADFIT_SIGNING_KEY`` (empty means unset). The signature covers the document's
canonical body, which names the weights file's SHA-256, so the weights are covered too.

A signed document carries ``"signature": {"algorithm": "hmac-sha256", "key_id": ..., "hmac":
...}``; ``key_id`` is the first 8 hex digits of the SHA-256 of the key (never the key), so a
refusal can tell "signed with a different key" from "edited after signing".
"""

from __future__ import annotations

import hashlib
import hmac
import os

from ..errors import ConfigError, PersistError
from .schema import SIGNATURE_ALGORITHM, check_signature

__all__ = ["ENV_VAR", "SigningKey", "resolve_key", "sign", "verify"]

#: the environment variable that holds the signing key
ENV_VAR = "GRADFIT_SIGNING_KEY"
_UNVERIFIED = f"or unset {ENV_VAR} to load it unverified (unsafe for files from others)"


class SigningKey:
    """A key and where it came from (named in messages; the key itself never is)."""

    __slots__ = ("secret", "source")

    def __init__(self, secret: bytes, source: str):
        self.secret, self.source = secret, source

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.secret).hexdigest()[:8]

    def __repr__(self) -> str:  # never show the secret
        return f"SigningKey(key_id={self.key_id!r}, source={self.source!r})"


def resolve_key(signing_key: str | bytes | None = None) -> SigningKey | None:
    """The key to sign or verify with: ``signing_key`` if given, else ``$GRADFIT_SIGNING_KEY``,
    else None (no signing, no verification).

    Raises
    ------
    ConfigError
        ``signing_key`` is empty or neither text nor bytes.
    """
    if signing_key is None:
        env = os.environ.get(ENV_VAR, "")
        return SigningKey(env.encode("utf-8"), ENV_VAR) if env else None
    if isinstance(signing_key, str):
        signing_key = signing_key.encode("utf-8")
    if not isinstance(signing_key, (bytes, bytearray)):
        raise ConfigError(f"signing_key must be text or bytes, not {type(signing_key).__name__}")
    if not signing_key:
        raise ConfigError(f"signing_key is empty; pass a secret, or leave it out (then {ENV_VAR} is used if set)")
    return SigningKey(bytes(signing_key), "the signing key passed")


def sign(body: bytes, key: SigningKey) -> dict:
    """The signature entry of a document whose canonical body is ``body``."""
    return {"algorithm": SIGNATURE_ALGORITHM, "key_id": key.key_id,
            "hmac": hmac.new(key.secret, body, hashlib.sha256).hexdigest()}


def verify(entry, body: bytes, key: SigningKey | None, name: str) -> None:
    """Check the signature ``entry`` of a document (canonical body ``body``, file ``name``)
    against ``key``; without a key nothing is verified.

    Raises
    ------
    PersistError
        A key is set and the document is unsigned, signed with another key, or edited after
        it was signed; or the entry is malformed. The message starts with ``name`` and a
        colon, as every refusal of a file does, and says what to do.
    """
    if key is None:
        return  # no key, no claim: a signed file loads like any other (its checksum still checked)
    if entry is None:
        raise PersistError(f"{name}: not signed, and {key.source} is set (it was saved without the key, "
                           "or edited and its signature removed); re-save it with the key, " + _UNVERIFIED)
    try:
        check_signature(entry)
    except PersistError as exc:  # named like every other refusal of the file: "<path>: ..."
        raise PersistError(f"{name}: {exc}") from None
    if entry["key_id"] != key.key_id:
        raise PersistError(f"{name}: signed with a different key (key id {entry['key_id']}; {key.source} has "
                           f"key id {key.key_id}); load it with the key it was signed with, " + _UNVERIFIED)
    expected = hmac.new(key.secret, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, entry["hmac"]):
        raise PersistError(f"{name}: fails its signature under {key.source} (it was edited after it was "
                           "signed, its checksum recomputed); do not trust it, re-save the model from its source "
                           "with the key, " + _UNVERIFIED)
