"""`newsletter subscribers import` and `export`, through the real command."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings
from app.models import Delivery, DeliveryKind, Subscriber, SubscriberStatus, utcnow
from app.subscribers.csvfile import read_import_file
from tests.factories import cli_env, drain_outbox, make_subscriber, run_cli
from tests.smtp_server import SmtpServer

NEWSROOM_CSV = """\ufeffemail;name;language
amelie.kone@example.org;Amélie Koné;fr
Jean-Pierre.Ndongo@Example.CM;Jean-Pierre Ndongo;
not-an-address;Quelqu'un;fr
awa.sow@example.sn;Awa Sow;wo
AMELIE.KONE@example.org;Amélie (doublon);fr

reader@example.com;"Smith; John";en
marc.dupont@example.fr;Marc Dupont;fr
bounced@example.org;;fr
erased@example.org;;
"""


async def count(session: AsyncSession, model: type, *where: object) -> int:
    await session.rollback()
    return (await session.exec(select(func.count()).select_from(model).where(*where))).one()  # type: ignore[arg-type]


@pytest.fixture
async def suppressed(app: FastAPI, session: AsyncSession) -> None:
    """Addresses that left: an import must never bring them back."""
    tokens = app.state.tokens
    await make_subscriber(
        session, tokens, email="marc.dupont@example.fr", status=SubscriberStatus.unsubscribed
    )
    await make_subscriber(
        session, tokens, email="bounced@example.org", status=SubscriberStatus.bounced
    )
    erased = await make_subscriber(session, tokens, email="erased@example.org")
    erased.email = None
    erased.name = None
    erased.status = SubscriberStatus.unsubscribed
    erased.erased_at = utcnow()
    session.add(erased)
    await session.commit()


async def test_import_reports_bad_rows_and_never_revives(
    app: FastAPI,
    session: AsyncSession,
    settings: Settings,
    smtp_server: SmtpServer,
    tmp_path: Path,
    suppressed: None,
) -> None:
    path = tmp_path / "abonnes.csv"
    path.write_text(NEWSROOM_CSV, encoding="utf-8")

    result = await run_cli(["subscribers", "import", str(path)], cli_env(settings))
    assert result.exit_code == 0, result.output
    errors = result.stderr.splitlines()
    assert errors[0].startswith("line 4: invalid email 'not-an-address'")
    assert errors[1] == "line 5: language 'wo' is not one of en, fr"
    assert errors[2] == "line 6: duplicate of line 2: AMELIE.KONE@example.org"
    assert len(errors) == 3
    assert "imported 3 (pending, confirmation email queued)" in result.stdout
    assert "suppressed, not revived 3" in result.stdout
    assert "rejected rows 3" in result.stdout

    await session.rollback()
    rows = {
        s.email: s
        for s in (await session.exec(select(Subscriber).where(col(Subscriber.email).is_not(None))))
    }
    jp = rows["Jean-Pierre.Ndongo@example.cm"]  # as typed; the domain lower-cased
    assert (jp.name, jp.language, jp.status, jp.consent_source) == (
        "Jean-Pierre Ndongo",
        "fr",
        "pending",
        "import",
    )
    assert jp.consent_at is not None
    assert rows["reader@example.com"].name == "Smith; John"
    assert rows["reader@example.com"].language == "en"
    assert rows["marc.dupont@example.fr"].status == SubscriberStatus.unsubscribed
    assert rows["bounced@example.org"].status == SubscriberStatus.bounced
    assert await count(session, Subscriber, col(Subscriber.erased_at).is_not(None)) == 1
    assert await count(session, Subscriber, col(Subscriber.email) == "erased@example.org") == 0
    assert await count(session, Delivery) == 3

    # The double opt-in email goes out, in each reader's language.
    report = await drain_outbox(app)
    assert report.sent == 3
    [english] = smtp_server.messages_to("reader@example.com")
    assert "confirm your subscription" in english["Subject"].lower()

    # Twice: nobody added, no second confirmation.
    again = await run_cli(["subscribers", "import", str(path)], cli_env(settings))
    assert again.exit_code == 0, again.output
    assert "imported 0" in again.stdout
    assert "already subscribed 3" in again.stdout
    assert await count(session, Subscriber) == 6
    assert await count(session, Delivery) == 3


async def test_import_confirmed_comma_file_without_bom(
    session: AsyncSession, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "consented.csv"
    path.write_text(
        'email,name\nfatou.ndiaye@example.sn,"Ndiaye, Fatou"\nkofi@example.gh,\n', encoding="utf-8"
    )
    env = {**cli_env(settings), "DEFAULT_CADENCE": "daily"}
    result = await run_cli(
        ["subscribers", "import", str(path), "--confirmed", "--language", "en"], env
    )
    assert result.exit_code == 0, result.output
    assert "imported 2 (confirmed)" in result.stdout
    await session.rollback()
    fatou = (
        await session.exec(select(Subscriber).where(Subscriber.email == "fatou.ndiaye@example.sn"))
    ).one()
    assert (fatou.name, fatou.language, fatou.status) == ("Ndiaye, Fatou", "en", "confirmed")
    assert (fatou.cadence, fatou.topics) == ("daily", [])  # DEFAULT_CADENCE, every topic
    assert fatou.confirmed_at is not None
    assert fatou.consent_source == "import"
    assert await count(session, Delivery) == 0  # consent already held: no opt-in email


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"name,language\nAmelie,fr\n", "the header has no 'email' column"),
        (b"\n\nemail\n", "the first line must be a header"),
        (b"email\n\xff\xfe broken\n", "is not UTF-8 text"),
    ],
)
async def test_import_refuses_unusable_files(
    settings: Settings, tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    result = await run_cli(["subscribers", "import", str(path)], cli_env(settings))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert message in result.stderr


async def test_export_streams_csv_without_erased(
    app: FastAPI, session: AsyncSession, settings: Settings, tmp_path: Path, suppressed: None
) -> None:
    tokens = app.state.tokens
    await make_subscriber(session, tokens, email="amelie.kone@example.org", name="Amélie Koné")
    await make_subscriber(
        session, tokens, email="reader@example.com", name="Smith, John", language="en"
    )

    result = await run_cli(["subscribers", "export"], cli_env(settings))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["email", "name", "language", "status", "created_at", "confirmed_at"]
    assert [r["email"] for r in rows] == [
        "marc.dupont@example.fr",
        "bounced@example.org",
        "amelie.kone@example.org",
        "reader@example.com",
    ]
    assert rows[3]["name"] == "Smith, John"
    assert rows[2]["confirmed_at"].endswith("+00:00")
    assert "exported 4 subscriber(s)" in result.stderr

    out = tmp_path / "confirmed.csv"
    result = await run_cli(
        ["subscribers", "export", "--status", "confirmed", "--output", str(out)], cli_env(settings)
    )
    assert result.exit_code == 0, result.output
    confirmed = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["email"] for r in confirmed] == ["amelie.kone@example.org", "reader@example.com"]
    assert confirmed[0]["name"] == "Amélie Koné"


async def test_import_reports_addresses_needing_smtputf8_by_line(
    app: FastAPI, tmp_path: Path
) -> None:
    path = tmp_path / "accents.csv"
    path.write_text(
        "email,name\njosé@exemple.fr,José\njose@exémple.fr,Jose\nçava@exemple.fr,\n",
        encoding="utf-8",
    )
    parsed = read_import_file(path, tokens=app.state.tokens)
    assert parsed.errors == [
        (2, "invalid email 'josé@exemple.fr': this address needs SMTPUTF8, which is not supported"),
        (4, "invalid email 'çava@exemple.fr': this address needs SMTPUTF8, which is not supported"),
    ]
    assert [row.email for row in parsed.rows] == ["jose@xn--exmple-cva.fr"]


async def test_export_defuses_formulas_and_import_reads_them_back(
    app: FastAPI, session: AsyncSession, settings: Settings, tmp_path: Path
) -> None:
    # Names come from the public form: a spreadsheet must not run one as a formula.
    evil = '=HYPERLINK("http://evil","x")'
    await make_subscriber(session, app.state.tokens, email="awa.sow@example.sn", name=evil)
    await make_subscriber(session, app.state.tokens, email="-tiret@example.org", name="'@quoted")
    await make_subscriber(session, app.state.tokens, email="plain@example.org", name="Marc-Antoine")

    out = tmp_path / "export.csv"
    result = await run_cli(["subscribers", "export", "--output", str(out)], cli_env(settings))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [(r["email"], r["name"]) for r in rows] == [
        ("awa.sow@example.sn", "'" + evil),
        ("'-tiret@example.org", "''@quoted"),
        ("plain@example.org", "Marc-Antoine"),
    ]
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))

    # What export wrote imports as what was stored.
    parsed = read_import_file(out, tokens=app.state.tokens)
    assert parsed.errors == []
    assert [(r.email, r.name) for r in parsed.rows] == [
        ("awa.sow@example.sn", evil),
        ("-tiret@example.org", "'@quoted"),
        ("plain@example.org", "Marc-Antoine"),
    ]


@pytest.mark.slow
async def test_import_100k_rows_once(
    session: AsyncSession, settings: Settings, tmp_path: Path, backend: str
) -> None:
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8") as handle:
        handle.write("email,name,language\n")
        for i in range(100_000):
            handle.write(f"lecteur.{i}@exemple{i % 97}.fr,Lecteur {i},{'fr' if i % 3 else 'en'}\n")
    started = time.perf_counter()
    result = await run_cli(["subscribers", "import", str(path)], cli_env(settings))
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    assert "imported 100000 (pending" in result.stdout
    print(f"\n100,000-row import on {backend}: {elapsed:.1f} s")
    assert await count(session, Subscriber) == 100_000
    assert (
        await count(session, Delivery, col(Delivery.kind) == DeliveryKind.confirmation) == 100_000
    )

    started = time.perf_counter()
    again = await run_cli(["subscribers", "import", str(path)], cli_env(settings))
    print(f"the same file again on {backend}: {time.perf_counter() - started:.1f} s")
    assert "imported 0" in again.stdout
    assert await count(session, Subscriber) == 100_000
