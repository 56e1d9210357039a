"""DKIM: `newsletter dkim generate`, then sign a real message and verify it with dkimpy."""

from __future__ import annotations

import re
import stat
import time
from pathlib import Path

import dkim
import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings
from app.mail.dkim import DkimConfigError, DkimSigner
from app.mail.message import build_message
from tests.conftest import SECRET

DOMAIN = "dzaleu.test"
SELECTOR = "nl2025"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """(private key path, DNS record name, DNS record value), from the real command."""
    out = tmp_path_factory.mktemp("dkim")
    result = CliRunner().invoke(
        cli,
        ["dkim", "generate", "--selector", SELECTOR, "--domain", DOMAIN, "--out", str(out)],
        env={"SECRET_KEY": SECRET, "LOG_LEVEL": "WARNING"},
    )
    assert result.exit_code == 0, result.output
    match = re.fullmatch(r"(\S+)\. IN TXT \( ((?:\"[^\"]{1,255}\" ?)+)\)", result.stdout.strip())
    assert match, result.stdout
    assert "DKIM_PRIVATE_KEY_PATH=" in result.stderr
    value = "".join(re.findall(r'"([^"]+)"', match.group(2)))
    assert value.startswith("v=DKIM1; k=rsa; p=")
    assert value in result.stderr  # unsplit, for DNS web panels
    return out / f"{SELECTOR}.private.pem", match.group(1), value


def dkim_settings(key_path: Path | None) -> Settings:
    return Settings(
        _env_file=None,
        secret_key=SECRET,
        mail_from="Dzaleu <newsletter@dzaleu.test>",
        dkim_domain=DOMAIN,
        dkim_selector=SELECTOR,
        dkim_private_key_path=key_path,
    )


def digest_message() -> bytes:
    msg = build_message(
        mail_from="Dzaleu <newsletter@dzaleu.test>",
        to_name="Amélie Koné",
        to_address="amelie.kone@example.org",
        subject="L’essentiel du mardi 11 novembre : élections, météo, culture",
        text="Bonjour Amélie,\n\nVoici l’essentiel de l’actualité.\n",
        html="<p>Bonjour Amélie,</p><p>Voici l’essentiel de l’actualité.</p>",
        message_id="<nl.1042.7f0edcf799@dzaleu.test>",
        headers={
            "List-Unsubscribe": "<https://lettre.dzaleu.test/unsubscribe/WzQyLCI5ZjNhIl0.abc>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "List-Id": "Dzaleu <lettre.dzaleu.test>",
        },
    )
    return msg.as_bytes()


def test_generate_writes_a_private_key_only_its_owner_reads(
    generated: tuple[Path, str, str],
) -> None:
    key_path, name, value = generated
    assert name == f"{SELECTOR}._domainkey.{DOMAIN}"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.with_name(f"{SELECTOR}.public.pem").read_text().startswith("-----BEGIN PUBLIC")
    assert len(value) > 300  # a 2048-bit key


def test_generate_refuses_to_overwrite(generated: tuple[Path, str, str]) -> None:
    key_path, _, _ = generated
    result = CliRunner().invoke(
        cli,
        ["dkim", "generate", "--selector", SELECTOR, "--out", str(key_path.parent)],
        env={"SECRET_KEY": SECRET},
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert "already exists" in result.stderr


def test_signed_message_verifies_with_dkimpy(generated: tuple[Path, str, str]) -> None:
    key_path, name, value = generated
    signer = DkimSigner.from_settings(dkim_settings(key_path))
    assert signer is not None
    signed = signer.sign(digest_message())
    assert signed.startswith(b"DKIM-Signature: ")

    def dns(qname: bytes, timeout: int = 5) -> bytes | None:
        return value.encode() if qname == f"{name}.".encode() else None

    assert dkim.verify(signed, dnsfunc=dns)
    header = signed.split(b"\r\n\r\n", 1)[0].decode()
    signature = re.search(r"DKIM-Signature:(.*?)\r\n(?=\S)", header, re.S)
    assert signature
    fields = {k.strip(): v for k, _, v in (f.partition("=") for f in signature.group(1).split(";"))}
    assert fields["c"] == "relaxed/relaxed"
    assert fields["d"] == DOMAIN
    assert fields["s"] == SELECTOR
    signed_headers = "".join(fields["h"].split()).split(":")
    for required in (
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "mime-version",
        "content-type",
        "list-id",
    ):
        assert required in signed_headers

    # Relaxed canonicalisation survives refolding; a changed subject or body does not verify.
    assert not dkim.verify(signed.replace(b"\r\nSubject: ", b"\r\nSubject: X", 1), dnsfunc=dns)
    assert not dkim.verify(signed.replace(b"Bonjour", b"Bonsoir", 1), dnsfunc=dns)
    grafted = signed.replace(b"\r\n\r\n", b"\r\nList-Unsubscribe: <https://evil.test/>\r\n\r\n", 1)
    assert not dkim.verify(grafted, dnsfunc=dns)


def test_signing_is_cheap(generated: tuple[Path, str, str]) -> None:
    signer = DkimSigner.from_settings(dkim_settings(generated[0]))
    assert signer is not None
    message = digest_message()
    started = time.perf_counter()
    for _ in range(50):
        signer.sign(message)
    per_message = (time.perf_counter() - started) / 50
    print(f"DKIM signing: {per_message * 1000:.2f} ms per message")
    assert per_message < 0.05


def test_missing_or_broken_key_fails_at_start(tmp_path: Path) -> None:
    assert DkimSigner.from_settings(Settings(_env_file=None, secret_key=SECRET)) is None
    with pytest.raises(DkimConfigError, match="cannot read .*missing.pem"):
        DkimSigner.from_settings(dkim_settings(tmp_path / "missing.pem"))
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    with pytest.raises(DkimConfigError, match="not a PEM RSA private key"):
        DkimSigner.from_settings(dkim_settings(broken))
    half = Settings(_env_file=None, secret_key=SECRET, dkim_domain=DOMAIN)
    with pytest.raises(DkimConfigError, match="DKIM_SELECTOR, DKIM_PRIVATE_KEY_PATH"):
        DkimSigner.from_settings(half)
