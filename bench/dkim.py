"""DKIM signing rate on one core: the service's signer (OpenSSL through `cryptography`) with
RSA-2048, Ed25519 and both, next to dkimpy (pure Python), on a digest copy of the real size.

The copy is a `MessageTemplate` rendering (what the sender signs) of the sample feed's 15
articles' worth of text (about 26 KiB, like the copies of bench/send_throughput.py). Rates are
per CPU second of this process (time.process_time), so other load on the machine does not
lower them; wall-clock rates are printed next to them.

Then, `--loop`: what signing off the event loop (asyncio.to_thread per batch, as the sender
does) costs or saves next to signing on it, while the loop is busy with SMTP-like work.

    python bench/dkim.py
    python bench/dkim.py --seconds 3 --loop

Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's directory comes first on sys.path, and this file would shadow
# dkimpy's `dkim` module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from app.articles.feeds import parse_feed  # noqa: E402
from app.config import Settings  # noqa: E402
from app.digests.render import render_digest_of  # noqa: E402
from app.mail.dkim import DkimSigner, KeyAlgorithm, generate_key, load_signing_key  # noqa: E402
from app.mail.message import MessageTemplate  # noqa: E402
from app.models import Digest, DigestArticle  # noqa: E402

SAMPLE = ROOT / "tests" / "data" / "wordpress-feed-fr.xml"
DOMAIN = "dzaleu.test"


def digest_copy() -> bytes:
    """One reader's copy of a 15-article French digest, as the sender gets it to sign: the
    sample feed's 5 items and 10 variants, through the real digest template."""
    entries = list(parse_feed(SAMPLE.read_bytes(), url="https://www.dzaleu.com/feed/").entries)
    entries += [
        replace(e, url=f"{e.url}?v={n}", title=f"{e.title} ({n})")
        for n in (2, 3)
        for e in entries[:5]
    ]
    digest = Digest(id=1, created_at=datetime(2021, 12, 30, tzinfo=UTC))
    articles = [
        DigestArticle(
            digest_id=1,
            position=position,
            title=entry.title,
            url=entry.url,
            summary=entry.summary,
            author=entry.author,
            categories=list(entry.categories),
            image_url=entry.image_url,
            image_alt=entry.image_alt,
            published_at=entry.published_at,
        )
        for position, entry in enumerate(entries[:15])
    ]
    settings = Settings(
        _env_file=None,
        app_env="test",
        secret_key="x" * 32,
        site_name="Dzaleu",
        site_url="https://www.dzaleu.com/",
        organization_address="Dzaleu, 1 rue de la Presse, Yaoundé",
    )
    rendered = render_digest_of(digest, articles, language="fr", settings=settings)
    subject, text, body = rendered.subject, rendered.text, rendered.html
    template = MessageTemplate(
        mail_from="Dzaleu <newsletter@dzaleu.test>",
        subject=subject,
        text=text,
        html=body,
        headers={
            "List-Id": "<newsletter.dzaleu.test>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "Precedence": "bulk",
        },
    )
    url = "https://www.dzaleu.com/newsletter/unsubscribe/WzQyLCI5ZjNhYmMxMjM0NTY3ODkwIl0.Zq1x9w.abcdefghijklmnopqrstuvwxyz0"
    return template.render(
        to_name="Amelie Kone",
        to_address="amelie.kone@example.org",
        message_id="<nl.1042.7f0edcf799@dzaleu.test>",
        values={"greeting_name": " Amélie", "unsubscribe_url": url, "name": "Amélie"},
        headers={"List-Unsubscribe": f"<{url}>"},
    )


def rate(sign: Callable[[], object], seconds: float) -> tuple[float, float]:
    """(signatures per CPU second, per wall second), best of three runs of `seconds` / 3."""
    best_cpu = best_wall = 0.0
    for _ in range(3):
        count = 0
        cpu, wall = time.process_time(), time.perf_counter()
        deadline = wall + seconds / 3
        while time.perf_counter() < deadline:
            for _ in range(20):
                sign()
            count += 20
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        best_cpu = max(best_cpu, count / cpu if cpu else 0.0)
        best_wall = max(best_wall, count / wall)
    return best_cpu, best_wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="per signer (default 2)")
    parser.add_argument("--loop", action="store_true", help="also: thread hop vs on the loop")
    args = parser.parse_args()

    message = digest_copy()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        rsa_file = generate_key(domain=DOMAIN, selector="rsa", out_dir=out)
        ed_file = generate_key(
            domain=DOMAIN, selector="ed", out_dir=out, algorithm=KeyAlgorithm.ed25519
        )
        rsa_pem = rsa_file.private_key_path.read_bytes()
        ed_pem = ed_file.private_key_path.read_bytes()
    rsa = load_signing_key(rsa_pem, selector="rsa", algorithm=KeyAlgorithm.rsa, setting="-")
    ed = load_signing_key(ed_pem, selector="ed", algorithm=KeyAlgorithm.ed25519, setting="-")
    signers = {
        "RSA-2048": DkimSigner(domain=DOMAIN, keys=[rsa]),
        "Ed25519": DkimSigner(domain=DOMAIN, keys=[ed]),
        "RSA-2048 + Ed25519": DkimSigner(domain=DOMAIN, keys=[rsa, ed]),
    }
    rows: list[tuple[str, float, float]] = []
    for name, signer in signers.items():
        cpu, wall = rate(lambda s=signer: s.sign(message), args.seconds)  # type: ignore[misc]
        rows.append((f"newsletter {name}", cpu, wall))
    both = signers["RSA-2048 + Ed25519"]
    cpu, wall = rate(lambda: both.sign(message, wire_ready=True), args.seconds)
    rows.append(("  the same, sign(wire_ready=True)", cpu, wall))
    rows.extend(dkimpy_rows(message, rsa_pem, ed, args.seconds))

    print()
    print(f"DKIM signing, one core, a {len(message) / 1024:.1f} KiB digest copy (relaxed/relaxed)")
    print(f"{'signer':<34}{'sign/s':>9}{'µs each':>9}{'wall sign/s':>13}")
    for name, cpu, wall in rows:
        print(f"{name:<34}{cpu:>9,.0f}{1e6 / cpu:>9,.0f}{wall:>13,.0f}")
    rsa_rate, both_rate = rows[0][1], rows[2][1]
    print(
        f"target: one worker signs >= 1,500 msg/s: RSA-2048 {rsa_rate:,.0f}/s, "
        f"RSA-2048 + Ed25519 {both_rate:,.0f}/s (per CPU second; the sender also needs the CPU)"
    )
    if args.loop:
        loop_figures(signers["RSA-2048"], message, args.seconds)


def dkimpy_rows(
    message: bytes, rsa_pem: bytes, ed: object, seconds: float
) -> list[tuple[str, float, float]]:
    try:
        import dkim
    except ImportError:
        print("dkimpy is not installed (pip install -e '.[dev]'): no comparison")
        return []
    headers = [b"from", b"to", b"subject", b"date", b"message-id", b"list-unsubscribe"]

    def sign_rsa() -> object:
        return dkim.sign(
            message,
            b"rsa",
            DOMAIN.encode(),
            rsa_pem,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=headers,
        )

    rows = [("dkimpy RSA-2048", *rate(sign_rsa, seconds))]
    try:
        import base64

        from cryptography.hazmat.primitives import serialization

        seed = ed.private_key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        ed_key = base64.b64encode(seed)

        def sign_ed() -> object:
            return dkim.sign(
                message,
                b"ed",
                DOMAIN.encode(),
                ed_key,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=headers,
                signature_algorithm=b"ed25519-sha256",
            )

        rows.append(("dkimpy Ed25519 (PyNaCl)", *rate(sign_ed, seconds)))
    except Exception as exc:  # PyNaCl missing
        print(f"dkimpy Ed25519 skipped: {exc}")
    return rows


def loop_figures(signer: DkimSigner, message: bytes, seconds: float) -> None:
    """The sender's shape: 16 lanes each spend ~100 µs of Python per message sent (an SMTP
    transaction's share of the loop), while the next batch of 500 copies is signed, either on
    the loop or in a thread per batch (asyncio.to_thread, as the sender does today). What
    counts is the messages sent per second."""

    async def run(mode: str) -> float:
        stop = time.perf_counter() + seconds
        ready = 0  # signed copies waiting for a lane
        sent = 0
        more = asyncio.Event()

        def sign_batch(batch: list[bytes]) -> None:
            for item in batch:
                signer.sign(item)

        async def producer() -> None:
            nonlocal ready
            batch = [message] * 500
            while time.perf_counter() < stop:
                if ready >= 500:  # one batch in hand, one being signed: the sender's pipeline
                    await asyncio.sleep(0.001)
                    continue
                if mode == "thread":
                    await asyncio.to_thread(sign_batch, batch)
                elif mode == "loop":
                    sign_batch(batch)
                ready += len(batch)
                more.set()
                await asyncio.sleep(0)

        async def lane() -> None:
            nonlocal ready, sent
            while time.perf_counter() < stop:
                if ready == 0:
                    more.clear()
                    try:
                        await asyncio.wait_for(more.wait(), timeout=0.1)
                    except TimeoutError:
                        pass
                    continue
                ready -= 1
                until = time.perf_counter() + 0.0001
                while time.perf_counter() < until:
                    pass
                sent += 1
                await asyncio.sleep(0)

        started = time.perf_counter()
        await asyncio.gather(producer(), *(lane() for _ in range(16)))
        return sent / (time.perf_counter() - started)

    print()
    print("the sender's pipeline, simulated: batches of 500 signed while 16 lanes send")
    print(f"(each send ~100 µs of Python on the loop; {seconds:g}s per mode)")
    print(f"{'signing':<32}{'sent/s':>9}")
    for mode, label in (
        ("none", "none (DKIM off)"),
        ("loop", "on the event loop"),
        ("thread", "asyncio.to_thread per batch"),
    ):
        print(f"{label:<32}{asyncio.run(run(mode)):>9,.0f}")


if __name__ == "__main__":
    main()
