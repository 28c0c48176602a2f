"""The published vectors of PROTOCOLS.md and the edges of our AES/signature layer."""

from __future__ import annotations

import base64

import pytest
from wechatpy.crypto import PrpCrypto

from wechat_service import wxcrypto

VECTOR_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
COMPAT_ENCRYPT = (
    "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2L"
    "dJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6u"
    "x5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJ"
    "pXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCz"
    "pu9GhglF2PE="
)


def test_plain_signature_vector() -> None:
    assert (
        wxcrypto.signature("AAAAA", "1714037059", "486452656") == "899cf89e464efb63f54ddac96b0a0a235f53aa78"
    )
    wxcrypto.verify_signature(
        ("AAAAA", "1714037059", "486452656"), "899cf89e464efb63f54ddac96b0a0a235f53aa78"
    )


def test_plain_signature_rejects_a_forgery() -> None:
    with pytest.raises(wxcrypto.SignatureError):
        wxcrypto.verify_signature(("AAAAA", "1714037059", "486452656"), "0" * 40)
    with pytest.raises(wxcrypto.SignatureError):
        wxcrypto.verify_signature(("AAAAA", "1714037059", "486452656"), None)


def test_compatible_mode_packet_from_the_official_python_sample() -> None:
    sig = wxcrypto.signature("spamtest", "1409735669", "1320562132", COMPAT_ENCRYPT)
    assert sig == "5d197aaffba7e9b25a30732f161a50dee96bd5fa"
    xml = wxcrypto.decrypt(COMPAT_ENCRYPT, [VECTOR_KEY], "wx2c2769f8efd9abc2")
    assert "<FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName>" in xml
    assert "<ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>" in xml
    assert "<Content><![CDATA[abcdteT]]></Content>" in xml
    assert "<MsgId>6054768590064713728</MsgId>" in xml
    assert "<CreateTime>1409735668</CreateTime>" in xml


def test_encryption_vector_from_the_official_java_sample() -> None:
    crypto = PrpCrypto(wxcrypto.aes_key(VECTOR_KEY))
    crypto.get_random_string = lambda: "aaaabbbbccccdddd"  # the sample's fixed random prefix
    out = crypto.encrypt("我是中文abcd123", "wxb11529c136998cb6").decode()
    assert out == "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg=="
    assert wxcrypto.decrypt(out, [VECTOR_KEY], "wxb11529c136998cb6") == "我是中文abcd123"


def test_wrong_appid_is_rejected() -> None:
    with pytest.raises(wxcrypto.DecryptError, match="another appid"):
        wxcrypto.decrypt(COMPAT_ENCRYPT, [VECTOR_KEY], "wx0000000000000000")


def test_previous_key_still_decrypts_during_rotation() -> None:
    old, new = wxcrypto.generate_aes_key(), wxcrypto.generate_aes_key()
    enc = wxcrypto.encrypt("<xml/>", old, "wx1234567890abcdef")
    assert wxcrypto.decrypt(enc, [new, old], "wx1234567890abcdef") == "<xml/>"
    with pytest.raises(wxcrypto.DecryptError):
        wxcrypto.decrypt(enc, [new], "wx1234567890abcdef")


@pytest.mark.parametrize(
    "garbage",
    ["", "not base64!!", base64.b64encode(b"short").decode(), base64.b64encode(b"x" * 64).decode(), "A" * 44],
)
def test_garbage_ciphertext_is_one_typed_error(garbage: str) -> None:
    with pytest.raises(wxcrypto.DecryptError):
        wxcrypto.decrypt(garbage, [VECTOR_KEY], "wx2c2769f8efd9abc2")


def test_aes_key_must_be_43_base64_chars() -> None:
    assert len(wxcrypto.generate_aes_key()) == 43
    with pytest.raises(ValueError):
        wxcrypto.aes_key("short")


def test_encrypted_reply_round_trips_through_the_envelope() -> None:
    from defusedxml.ElementTree import fromstring

    key = wxcrypto.generate_aes_key()
    body = wxcrypto.encrypted_reply(
        "<xml><Content>hi</Content></xml>", "tok", key, "wx1234567890abcdef", "n1", "123"
    )
    fields = {c.tag: c.text for c in fromstring(body)}
    wxcrypto.verify_signature(("tok", "123", "n1", fields["Encrypt"]), fields["MsgSignature"])
    assert (
        wxcrypto.decrypt(fields["Encrypt"], [key], "wx1234567890abcdef") == "<xml><Content>hi</Content></xml>"
    )
