"""WeChat callback signatures and AES message encryption.

The AES work is wechatpy's (``PrpCrypto``); what we add is what it lacks: constant-time
signature checks, a tolerant error surface (any malformed ciphertext is one typed error), and
trying the previous EncodingAESKey during a rotation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import string
import time

from wechatpy.crypto import PrpCrypto


class SignatureError(ValueError):
    """The request is not signed with this account's token."""


class DecryptError(ValueError):
    """The ciphertext cannot be opened with this account's keys, or is for another appid."""


class WrongAppidError(DecryptError):
    """The ciphertext opens under one of our keys but names another appid: never ours to read."""


def signature(*parts: str) -> str:
    """sha1 of the sorted, concatenated parts (token, timestamp, nonce[, encrypt])."""
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()  # noqa: S324 - WeChat's protocol


def verify_signature(expected_parts: tuple[str, ...], given: str | None) -> None:
    if not given or not hmac.compare_digest(signature(*expected_parts).encode(), given.encode()):
        raise SignatureError("signature mismatch")


AES_KEY_ALPHABET = string.ascii_letters + string.digits  # what the WeChat admin accepts


def check_aes_key(encoding_aes_key: str) -> None:
    """What an operator may enter: exactly what the WeChat admin accepts (43 letters or digits)."""
    if len(encoding_aes_key or "") != 43 or not set(encoding_aes_key) <= set(AES_KEY_ALPHABET):
        raise ValueError("EncodingAESKey must be 43 letters or digits (as in the WeChat admin)")
    aes_key(encoding_aes_key)


def aes_key(encoding_aes_key: str) -> bytes:
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except binascii.Error:
        raise ValueError("EncodingAESKey must be 43 base64 characters") from None
    if len(encoding_aes_key) != 43 or len(key) != 32:
        raise ValueError("EncodingAESKey must be 43 base64 characters")
    return key


def generate_aes_key() -> str:
    return "".join(secrets.choice(AES_KEY_ALPHABET) for _ in range(43))


def encrypt(xml: str, encoding_aes_key: str, appid: str) -> str:
    return PrpCrypto(aes_key(encoding_aes_key)).encrypt(xml, appid).decode()


def decrypt(ciphertext: str, encoding_aes_keys: list[str], appid: str) -> str:
    """Decrypt with the first key that yields a well-formed packet for ``appid``."""
    return decrypt_with_key(ciphertext, encoding_aes_keys, appid)[0]


def decrypt_with_key(ciphertext: str, encoding_aes_keys: list[str], appid: str) -> tuple[str, str]:
    """The plaintext and the key that opened it: replies go back under that same key, because
    during a rotation WeChat keeps using the old one until the operator pastes the new one."""
    wrong_appid = False
    for key in encoding_aes_keys:
        try:
            raw = PrpCrypto(aes_key(key)).cipher.decrypt(base64.b64decode(ciphertext, validate=True))
        except (ValueError, binascii.Error):
            continue
        pad = raw[-1] if raw else 0
        if not 1 <= pad <= 32 or len(raw) < 20 + pad:
            continue
        content = raw[16:-pad]
        length = int.from_bytes(content[:4], "big")
        if length > len(content) - 4:
            continue
        try:
            xml = content[4 : 4 + length].decode()
            from_appid = content[4 + length :].decode()
        except UnicodeDecodeError:
            continue
        if from_appid != appid:
            wrong_appid = True
            continue
        return xml, key
    if wrong_appid:
        raise WrongAppidError("ciphertext for another appid")
    raise DecryptError("ciphertext cannot be decrypted")


def encrypted_reply(
    xml: str, token: str, encoding_aes_key: str, appid: str, nonce: str, timestamp: str | None = None
) -> str:
    """The safe-mode envelope around a passive reply."""
    timestamp = timestamp or str(int(time.time()))
    enc = encrypt(xml, encoding_aes_key, appid)
    sig = signature(token, timestamp, nonce, enc)
    return (
        f"<xml><Encrypt><![CDATA[{enc}]]></Encrypt><MsgSignature><![CDATA[{sig}]]></MsgSignature>"
        f"<TimeStamp>{timestamp}</TimeStamp><Nonce><![CDATA[{nonce}]]></Nonce></xml>"
    )
