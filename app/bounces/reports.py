"""Read returned mail: RFC 3464 delivery status notifications and RFC 5965 (ARF) complaints.

Pure parsing, no database: each message becomes a `Report` (what happened, and every clue that
can lead back to the delivery or the subscriber), or an `UnreadableReport` saying why not.
"""

from __future__ import annotations

import hashlib
import mailbox
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses
from pathlib import Path

from app.models import BounceType

_STATUS = re.compile(r"\b([245])\.\d{1,3}\.\d{1,3}\b")


class UnreadableReport(Exception):
    """Returned mail that is not a report this service understands (the reason says why)."""


@dataclass(slots=True)
class Report:
    type: BounceType
    reason: str
    # Clues, strongest first when matched: envelope (VERP) addresses, then the original
    # message's Message-ID, then recipient addresses.
    envelope_addresses: list[str] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)
    recipients: list[str] = field(default_factory=list)
    # Which report this is, so that it is never applied twice: see `report_id`.
    report_id: str = ""


def report_id(message: Message, raw: bytes) -> str:
    """The report's own Message-ID (unique per report, set by the reporting MTA), else a SHA-256
    of its bytes: the same returned message read again gets the same id."""
    message_id = " ".join(str(message.get("Message-ID", "")).split())
    if message_id and len(message_id) <= 200:
        return message_id
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _addresses(values: list[str]) -> list[str]:
    return [addr for _, addr in getaddresses(values) if "@" in addr]


def _typed_address(value: str | None) -> str | None:
    """`rfc822; user@example.org` (RFC 3464 address-type; address) -> `user@example.org`."""
    if not value:
        return None
    _, _, address = str(value).partition(";")
    address = (address or str(value)).strip().strip("<>").strip()
    return address if "@" in address else None


def _original_headers(report: Message) -> Message | None:
    """The returned message (message/rfc822) or its headers (text/rfc822-headers)."""
    for part in report.walk():
        content_type = part.get_content_type()
        if content_type == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                inner = payload[0]
                assert isinstance(inner, Message)
                return inner
        if content_type == "text/rfc822-headers":
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                return HeaderParser(policy=policy.compat32).parsestr(
                    raw.decode("utf-8", errors="replace")
                )
    return None


def _report_part(report: Message, content_type: str) -> list[Message]:
    """The header blocks of a message/delivery-status or message/feedback-report part."""
    for part in report.walk():
        if part.get_content_type() != content_type:
            continue
        payload = part.get_payload()
        if isinstance(payload, list):  # the email package splits delivery-status into blocks
            return [block for block in payload if isinstance(block, Message)]
        text = payload if isinstance(payload, str) else ""
        raw = part.get_payload(decode=True)
        if isinstance(raw, bytes):
            text = raw.decode("utf-8", errors="replace")
        # message/feedback-report and friends: one header block (blank lines are not expected).
        blocks = re.split(r"\r?\n\s*\r?\n", text.strip())
        return [HeaderParser(policy=policy.compat32).parsestr(block) for block in blocks if block]
    raise UnreadableReport(f"no {content_type} part")


def _clues(report: Report, message: Message, original: Message | None) -> None:
    # Where the bounce was delivered: the VERP address, if the relay kept it.
    for header in ("X-Original-To", "Delivered-To", "To", "Envelope-To"):
        report.envelope_addresses += _addresses(message.get_all(header) or [])
    if original is not None:
        report.envelope_addresses += _addresses(original.get_all("Return-Path") or [])
        for value in original.get_all("Message-ID") or []:
            report.message_ids.append(" ".join(str(value).split()))
        report.recipients += _addresses(original.get_all("To") or [])
    report.envelope_addresses = list(dict.fromkeys(a.lower() for a in report.envelope_addresses))
    report.message_ids = list(dict.fromkeys(report.message_ids))
    report.recipients = list(dict.fromkeys(a.lower() for a in report.recipients))


def _delivery_status(message: Message) -> Report:
    blocks = _report_part(message, "message/delivery-status")
    per_recipient = [b for b in blocks[1:] if b.get("Action") or b.get("Final-Recipient")]
    failed: list[tuple[BounceType, Message]] = []
    for block in per_recipient:
        action = str(block.get("Action", "")).strip().lower()
        status_match = _STATUS.search(str(block.get("Status", "")))
        status = status_match.group(0) if status_match else ""
        if action == "failed" and status.startswith("5"):
            # 5.7.x is policy (spam filtering, our reputation or setup), not the reader's
            # mailbox: counted as soft so that a blocklisting does not bounce a whole list.
            kind = BounceType.soft if status.startswith("5.7.") else BounceType.hard
        elif action in ("failed", "delayed"):
            kind = BounceType.soft
        else:
            continue  # delivered, relayed, expanded: not a bounce
        failed.append((kind, block))
    if not failed:
        raise UnreadableReport("delivery status report without a failed or delayed recipient")
    # A hard failure wins when a report covers several recipients (we send one per message).
    kind, block = min(failed, key=lambda item: item[0] != BounceType.hard)
    diagnostic = " ".join(str(block.get("Diagnostic-Code", "")).split())
    status = " ".join(str(block.get("Status", "")).split())
    reason = f"{block.get('Action', '').strip().lower()} {status}: {diagnostic}".strip(" :")
    report = Report(type=kind, reason=reason[:2000])
    for _, block in failed:
        for header in ("Original-Recipient", "Final-Recipient"):
            address = _typed_address(block.get(header))
            if address:
                report.recipients.append(address)
    _clues(report, message, _original_headers(message))
    return report


def _feedback(message: Message) -> Report:
    [fields, *_] = _report_part(message, "message/feedback-report")
    feedback_type = " ".join(str(fields.get("Feedback-Type", "abuse")).split()).lower()
    agent = " ".join(str(fields.get("User-Agent", "")).split())
    reason = f"feedback report: {feedback_type}" + (f" ({agent})" if agent else "")
    report = Report(type=BounceType.complaint, reason=reason[:2000])
    report.recipients += _addresses(fields.get_all("Original-Rcpt-To") or [])
    report.envelope_addresses += _addresses(fields.get_all("Original-Mail-From") or [])
    original = _original_headers(message)
    _clues(report, message, original)
    if original is None:
        raise UnreadableReport("feedback report without the original message or its headers")
    return report


def parse_report(raw: bytes) -> Report:
    """One returned message -> a Report, or UnreadableReport with the reason."""
    try:
        message = message_from_bytes(raw, policy=policy.compat32)
    except Exception as exc:  # the email package is lenient; anything it raises means unreadable
        raise UnreadableReport(f"not a parsable email: {exc}") from exc
    if message.get_content_type() != "multipart/report":
        raise UnreadableReport(
            f"not a delivery status or feedback report ({message.get_content_type()})"
        )
    report_type = str(message.get_param("report-type", "") or "").lower()
    if report_type == "delivery-status":
        report = _delivery_status(message)
    elif report_type == "feedback-report":
        report = _feedback(message)
    else:
        raise UnreadableReport(f"unsupported report type {report_type or '(none)'!r}")
    report.report_id = report_id(message, raw)
    return report


# Maildir file names are `<key>` in new/ and `<key>:2,<flags>` in cur/ (flags in ASCII order;
# S = seen), as https://cr.yp.to/proto/maildir.html and the `mailbox` module have them.
_INFO = ":2,"


def _maildir_files(path: Path) -> dict[str, Path]:
    """Every message file of a Maildir, by key."""
    files: dict[str, Path] = {}
    for subdir in ("new", "cur"):
        if not (path / subdir).is_dir():
            continue
        for entry in os.scandir(path / subdir):
            if entry.is_file() and not entry.name.startswith("."):
                files[entry.name.split(":")[0]] = Path(entry.path)
    return files


def _flags(file: Path) -> str:
    name = file.name
    return name.partition(_INFO)[2] if file.parent.name == "cur" and _INFO in name else ""


def read_messages(path: Path, *, include_seen: bool = False) -> Iterator[tuple[str, bytes]]:
    """(name, raw bytes) of every message in a Maildir (a directory with cur/ and new/), an mbox
    file, or a single message file. In a Maildir the name is the message's key, and messages
    flagged seen (`mark_seen`) are skipped unless `include_seen`."""
    if path.is_dir():
        if not (path / "cur").is_dir() and not (path / "new").is_dir():
            raise ValueError(f"{path} is a directory but not a Maildir (no cur/ or new/)")
        for key, file in sorted(_maildir_files(path).items()):
            if include_seen or "S" not in _flags(file):
                yield key, file.read_bytes()
        return
    if not path.is_file():
        raise ValueError(f"{path}: no such file or directory")
    with path.open("rb") as handle:
        is_mbox = handle.read(5) == b"From "
    if not is_mbox:
        yield path.name, path.read_bytes()
        return
    mbox = mailbox.mbox(path, factory=None, create=False)
    try:
        for index, key in enumerate(mbox.iterkeys(), start=1):
            yield f"{path.name}#{index}", mbox.get_bytes(key)
    finally:
        mbox.close()


def mark_seen(path: Path, keys: Iterable[str]) -> None:
    """Flag Maildir messages seen, as a mail client does: moved from new/ to cur/ with the S
    flag. A rename, not `Maildir.__setitem__` (which writes the message out again): the bytes,
    and so the `report_id` of a report without a Message-ID, stay the same."""
    if not path.is_dir():
        return  # an mbox or a single file: `report_id` alone keeps reports from applying twice
    files = _maildir_files(path)
    for key in keys:
        file = files.get(key)
        if file is None:
            continue  # deleted meanwhile (by a mail client, another run)
        flags = _flags(file)
        if "S" in flags:
            continue
        target = path / "cur" / f"{key}{_INFO}{''.join(sorted(set(flags + 'S')))}"
        (path / "cur").mkdir(exist_ok=True)
        os.rename(file, target)
