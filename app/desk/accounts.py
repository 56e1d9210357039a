"""Editor accounts and their server-side sessions: Argon2 passwords (pwdlib), revocable sessions,
a CSRF token per session."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from pwdlib import PasswordHash
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.addresses import InvalidEmail, normalize_email
from app.models import Editor, EditorSession, as_utc, utcnow

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1000  # Argon2 takes any length; a bound keeps a huge body from costing CPU
# Activity is written back at most this often: reading pages writes (almost) nothing.
TOUCH_EVERY = timedelta(minutes=1)

_hasher = PasswordHash.recommended()
# Verified when the address is unknown, so both answers cost one Argon2 verification.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class EditorError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class SignedIn:
    editor: Editor
    session: EditorSession


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise EditorError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters long")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise EditorError(f"the password must be at most {MAX_PASSWORD_LENGTH} characters long")
    return password


def _email(raw: str) -> str:
    try:
        return normalize_email(raw).lower()  # a sign-in name: case does not matter
    except InvalidEmail as exc:
        raise EditorError(f"invalid address {raw!r}: {exc}") from exc


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def editor_by_email(session: AsyncSession, *, email: str) -> Editor | None:
    try:
        normalized = _email(email)
    except EditorError:
        return None
    return (await session.exec(select(Editor).where(Editor.email == normalized))).first()


async def add_editor(
    session: AsyncSession, *, email: str, password: str, is_admin: bool = False
) -> Editor:
    address = _email(email)
    check_password(password)
    if await editor_by_email(session, email=address) is not None:
        raise EditorError(f"an editor with the address {address} exists already")
    editor = Editor(email=address, password_hash=_hasher.hash(password), is_admin=is_admin)
    session.add(editor)
    await session.flush()
    return editor


async def list_editors(session: AsyncSession) -> list[Editor]:
    return list((await session.exec(select(Editor).order_by(col(Editor.email)))).all())


async def end_sessions(session: AsyncSession, *, editor_id: int) -> None:
    await session.execute(sa.delete(EditorSession).where(col(EditorSession.editor_id) == editor_id))


async def remove_editor(session: AsyncSession, *, email: str) -> Editor | None:
    """Remove an editor; every browser they are signed in on is signed out."""
    editor = await editor_by_email(session, email=email)
    if editor is None:
        return None
    assert editor.id is not None
    await end_sessions(session, editor_id=editor.id)
    await session.delete(editor)
    await session.flush()
    return editor


async def reset_password(session: AsyncSession, *, email: str, password: str) -> Editor | None:
    """A new password; every session of the editor ends."""
    check_password(password)
    editor = await editor_by_email(session, email=email)
    if editor is None:
        return None
    assert editor.id is not None
    editor.password_hash = _hasher.hash(password)
    session.add(editor)
    await end_sessions(session, editor_id=editor.id)
    await session.flush()
    return editor


async def authenticate(session: AsyncSession, *, email: str, password: str) -> Editor | None:
    """The editor, if the password is theirs. Unknown address and wrong password take the same
    time (one Argon2 verification each) and give the same None."""
    editor = await editor_by_email(session, email=email)
    if len(password) > MAX_PASSWORD_LENGTH:
        return None
    if editor is None:
        _hasher.verify(password, _DUMMY_HASH)
        return None
    valid, new_hash = _hasher.verify_and_update(password, editor.password_hash)
    if not valid:
        return None
    if new_hash is not None:  # parameters raised since the hash was made
        editor.password_hash = new_hash
        session.add(editor)
    return editor


async def start_session(session: AsyncSession, *, editor: Editor) -> str:
    """A new session; returns the token for the cookie (only its hash is stored)."""
    assert editor.id is not None
    token = secrets.token_urlsafe(32)
    session.add(
        EditorSession(
            token_hash=_token_hash(token),
            editor_id=editor.id,
            csrf_token=secrets.token_urlsafe(32),
        )
    )
    await session.flush()
    return token


async def current_session(
    session: AsyncSession, *, token: str, idle: timedelta, now: datetime | None = None
) -> SignedIn | None:
    """The signed-in editor of a cookie, unless the session ended or sat idle too long."""
    if not token or len(token) > 100:
        return None
    row = (
        await session.exec(
            select(EditorSession, Editor)
            .join(Editor, col(Editor.id) == col(EditorSession.editor_id))
            .where(EditorSession.token_hash == _token_hash(token))
        )
    ).first()
    if row is None:
        return None
    editor_session, editor = row
    now = now or utcnow()
    last_seen = as_utc(editor_session.last_seen_at)
    if now - last_seen > idle:
        return None  # the row goes at the next sign-in or sign-out (reads do not delete)
    if now - last_seen > TOUCH_EVERY:
        editor_session.last_seen_at = now
        session.add(editor_session)
    return SignedIn(editor, editor_session)


async def end_session(session: AsyncSession, *, token: str) -> None:
    await session.execute(
        sa.delete(EditorSession).where(col(EditorSession.token_hash) == _token_hash(token))
    )


def csrf_valid(expected: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(expected.encode(), (presented or "").encode())
