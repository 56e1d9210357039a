"""Every knob of the service, read from the environment (or a `.env` file)."""

from __future__ import annotations

import re
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET_KEY = "dev-insecure-change-me"
ROOT = Path(__file__).resolve().parent.parent
VAR_DIR = ROOT / "var"


class SmtpSecurity(StrEnum):
    none = "none"
    starttls = "starttls"
    tls = "tls"


class ClickTracking(StrEnum):
    off = "off"
    aggregate = "aggregate"
    per_reader = "per_reader"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    app_env: Literal["development", "production", "test"] = "development"
    database_url: str = f"sqlite:///{VAR_DIR / 'newsletter.db'}"
    secret_key: str = DEFAULT_SECRET_KEY
    # Former SECRET_KEYs, comma-separated: links signed with them are still accepted, so a key
    # can be replaced without breaking the links already in readers' mailboxes.
    secret_key_fallbacks: str = ""
    public_url: str = "http://127.0.0.1:8000"
    # The newsroom's name, in the masthead, subjects and pages; unset: the host of SITE_URL
    # ("dzaleu.com"), else wording without a name ("notre newsletter"), never "Newsletter".
    site_name: str = ""

    # Brand and languages
    site_url: str | None = None  # the news site: the masthead links there
    brand_logo_url: str | None = None  # https image for the masthead (on white, dark mode too)
    brand_color: str = "#9b1c1c"  # links and buttons: needs 4.5:1 contrast against white
    default_language: str = "fr"  # pages and emails when the reader has not chosen
    # Pick a page's language from the browser's Accept-Language (Babel's negotiation) when the
    # reader has not chosen; off, a French site's readers get French whatever their browser.
    language_from_browser: bool = False
    # French spacing and quotes on feed titles, summaries and intros (app/typography.py).
    french_typography: bool = True
    # Origins of the news site allowed to post the signup form / JSON cross-origin and to frame
    # the signup form; comma-separated.
    site_origins: str = ""
    log_level: str = "INFO"

    # Mail
    mail_from: str = "Newsletter <newsletter@localhost>"
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_security: SmtpSecurity = SmtpSecurity.none
    smtp_timeout_seconds: float = 30.0
    # The wait for the relay's verdict once a copy's content is out. A copy given up on may be
    # delivered twice, so longer than SMTP_TIMEOUT_SECONDS (RFC 5321 says 10 minutes); but a
    # worker's stop (SIGTERM) and its next batch wait for it, so not 10 minutes.
    smtp_data_timeout_seconds: float = Field(default=120.0, gt=0)
    smtp_messages_per_connection: int = Field(default=500, ge=1)
    maildir_path: Path = VAR_DIR / "mail"

    # Sender
    send_concurrency: int = Field(default=4, ge=1, le=64)
    send_rate_per_second: float = Field(default=0.0, ge=0)
    send_batch_size: int = Field(default=200, ge=1, le=5000)
    send_lease_seconds: int = Field(default=300, ge=1)
    send_max_attempts: int = Field(default=8, ge=1)
    send_retry_base_seconds: float = Field(default=30.0, gt=0)
    send_retry_max_seconds: float = Field(default=3600.0, gt=0)
    send_pause_after_permanent_errors: int = Field(default=20, ge=1)
    # A relay that refuses most recipients of a send's first attempts refuses everyone.
    send_refusal_sample: int = Field(default=300, ge=1)
    send_refusal_max_share: float = Field(default=0.5, gt=0, le=1)
    worker_poll_seconds: float = Field(default=1.0, gt=0)
    # `newsletter worker` lowers its CPU priority by this (nice): when the workers saturate the
    # CPUs, the API and a database on the same machine answer first.
    worker_nice: int = Field(default=5, ge=0, le=19)
    # Delivery rows (and soft-bounce history) older than this go; figures stay (app.retention).
    delivery_retention_days: int = Field(default=90, ge=1)
    # Breakers: a send pauses itself past these shares (app/outbox/breakers.py).
    send_pause_bounce_rate: float = Field(default=0.05, gt=0, le=1)
    send_pause_complaint_rate: float = Field(default=0.003, gt=0, le=1)
    send_breaker_min_attempts: int = Field(default=500, ge=1)
    # Soft bounces on this many digests in a row, no delivery between: the reader is bounced.
    soft_bounce_limit: int = Field(default=3, ge=1)

    # Signup
    confirm_token_max_age_days: int = Field(default=7, ge=1)
    email_check_deliverability: bool = False
    confirmation_min_interval_minutes: int = Field(default=10, ge=0)
    confirmation_max_per_day: int = Field(default=5, ge=1)
    rate_limit_signup: str = "10/minute;100/hour"
    # Accepted signups are answered no sooner than this, whatever the address's status, so the
    # response time does not tell a new address from a subscribed one.
    signup_min_answer_ms: int = Field(default=250, ge=0, le=5000)
    rate_limit_storage_uri: str = "memory://"
    trust_forwarded_for: bool = False
    max_request_bytes: int = Field(default=1_000_000, ge=1024)

    # Desk (the editors' web interface)
    desk_session_idle_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60)
    # Sign-in attempts, per client address and per account (the same limits apply to each).
    rate_limit_desk_login: str = "5/minute;30/hour"
    # The editors' clock: a send scheduled on the desk is a local date and time in this zone.
    desk_timezone: str = "Europe/Paris"

    # Feeds
    feed_url: str | None = None
    feed_poll_minutes: int = Field(default=0, ge=0)
    # Fetch feeds from loopback, private, link-local and reserved addresses (a newsroom whose
    # WordPress is on its own network); off, an import cannot reach into the private network.
    feed_allow_private_networks: bool = False
    feed_max_items: int = Field(default=500, ge=1, le=100_000)

    # Archive and clicks (app/archive, app/clicks)
    # Sent digests on the web (/archive, /archive/feed.xml) and the "view in browser" link.
    archive_enabled: bool = True
    # off: links go straight to the site; aggregate: counts per digest and article and unique
    # readers, no per-reader record; per_reader: also each reader's clicks in their history.
    track_clicks: ClickTracking = ClickTracking.aggregate
    # A 1x1 image per copy (/o/{token}). Off by default: Apple Mail Privacy Protection and image
    # proxies fetch it for every copy, so an open count says little and watches readers.
    track_opens: bool = False
    # Readers' choices and schedules
    default_cadence: Literal["daily", "weekly"] = "weekly"
    # Topics readers may pick (the feed's category names), comma-separated; empty: no choice.
    topics: str = ""
    # A slot missed while no worker ran is sent late only within this many hours, and only once.
    schedule_catch_up_hours: float = Field(default=6.0, ge=0, le=24 * 31)

    # Compliance
    organization_address: str = ""
    unsubscribe_mailto: str | None = None
    list_id: str | None = None
    bounce_webhook_secret: str | None = None
    verp: bool = False

    # DKIM
    dkim_domain: str | None = None
    dkim_selector: str | None = None
    dkim_private_key_path: Path | None = None
    # A second signature (RFC 8463) next to RSA; its selector defaults to <DKIM_SELECTOR>-ed25519.
    dkim_ed25519_private_key_path: Path | None = None
    dkim_ed25519_selector: str | None = None

    # Backups (PostgreSQL): where pg_dump and pg_restore are; unset: Debian's
    # /usr/lib/postgresql/<server major>/bin, then PATH.
    pg_bin_dir: Path | None = None

    # Alerts and health (app/alerts, app/health.py)
    # Editors told by email (through the outbox) when a send pauses itself, the feed keeps
    # failing, a schedule's run fails or a send's bounce rate passes its warning line.
    alert_emails: str = ""
    # Also POSTed as JSON here (SSRF-guarded, as feeds: FEED_ALLOW_PRIVATE_NETWORKS applies).
    alert_webhook_url: str | None = None
    alert_feed_failures: int = Field(default=3, ge=1)
    alert_bounce_rate: float = Field(default=0.05, gt=0, le=1)
    # Attempts of a send after which its bounce rate is judged (fewer: too few to tell).
    alert_bounce_min_attempts: int = Field(default=100, ge=1)
    health_heartbeat_max_age_seconds: int = Field(default=120, ge=1)
    health_queue_max_age_seconds: int = Field(default=3600, ge=1)
    health_relay_probe_seconds: int = Field(default=60, ge=1)

    @model_validator(mode="after")
    def _refuse_insecure_production(self) -> Settings:
        if self.app_env == "production" and self.secret_key == DEFAULT_SECRET_KEY:
            raise ValueError(
                "APP_ENV=production with the default SECRET_KEY: set SECRET_KEY to a long random "
                'value (for example: python -c "import secrets; print(secrets.token_urlsafe(48))")'
            )
        if len(self.secret_key) < 16:
            raise ValueError("SECRET_KEY must be at least 16 characters long")
        for fallback in self.secret_key_fallback_list:
            if len(fallback) < 16:
                raise ValueError("SECRET_KEY_FALLBACKS: each key must be at least 16 characters")
            # The default key is public: links signed with it would be forgeries.
            if self.app_env == "production" and fallback == DEFAULT_SECRET_KEY:
                raise ValueError(
                    "SECRET_KEY_FALLBACKS holds the default SECRET_KEY: remove it (anyone can "
                    "sign links with it)"
                )
        for address in self.alert_email_list:
            if "@" not in address or any(c in address for c in " <>\r\n"):
                raise ValueError(f"ALERT_EMAILS: {address!r} is not an email address")
        if self.alert_webhook_url and not self.alert_webhook_url.lower().startswith(
            ("http://", "https://")
        ):
            raise ValueError("ALERT_WEBHOOK_URL must be an http:// or https:// URL")
        _check_brand(self)
        if self.feed_url and not self.feed_url.lower().startswith(("http://", "https://")):
            raise ValueError("FEED_URL must be an http:// or https:// URL")
        try:
            ZoneInfo(self.desk_timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"DESK_TIMEZONE: {self.desk_timezone!r} is not an IANA time zone "
                "(for example Europe/Paris)"
            ) from exc
        return self

    @property
    def desk_zone(self) -> ZoneInfo:
        return ZoneInfo(self.desk_timezone)

    @property
    def brand_name(self) -> str:
        """SITE_NAME, else the news site's host without "www.", else "" (no name to show)."""
        if self.site_name.strip():
            return self.site_name.strip()
        if self.site_url:
            host = urlsplit(self.site_url).hostname or ""
            return host.removeprefix("www.")
        return ""

    @property
    def public_base(self) -> str:
        return self.public_url.rstrip("/")

    @property
    def secret_key_fallback_list(self) -> list[str]:
        return [k.strip() for k in self.secret_key_fallbacks.split(",") if k.strip()]

    @property
    def alert_email_list(self) -> list[str]:
        return [a.strip() for a in self.alert_emails.split(",") if a.strip()]

    @property
    def site_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.site_origins.split(",") if o.strip()]

    @property
    def topic_list(self) -> list[str]:
        return list(dict.fromkeys(t.strip() for t in self.topics.split(",") if t.strip()))

    @property
    def uses_smtp(self) -> bool:
        return bool(self.smtp_host)


_HEX_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
MIN_CONTRAST = 4.5  # WCAG 2 AA for body text


def contrast_ratio(foreground: str, background: str = "#ffffff") -> float:
    """WCAG 2 contrast ratio of two #rrggbb colours (1 to 21)."""

    def luminance(color: str) -> float:
        channels = [int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    light, dark = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def _check_brand(settings: Settings) -> None:
    from app import i18n  # the catalogs decide which languages exist

    if not _HEX_COLOR.fullmatch(settings.brand_color):
        raise ValueError(f"BRAND_COLOR must be a colour like #9b1c1c, not {settings.brand_color!r}")
    ratio = contrast_ratio(settings.brand_color)
    if ratio < MIN_CONTRAST:
        raise ValueError(
            f"BRAND_COLOR {settings.brand_color} has a contrast of {ratio:.2f}:1 against white; "
            f"links and buttons need at least {MIN_CONTRAST}:1 to be readable: choose a darker "
            "colour"
        )
    for name in ("site_url", "brand_logo_url"):
        value = getattr(settings, name)
        if value is not None and not value.lower().startswith(("http://", "https://")):
            raise ValueError(f"{name.upper()} must be an http:// or https:// URL")
    if not i18n.is_available(settings.default_language):
        raise ValueError(
            f"DEFAULT_LANGUAGE {settings.default_language!r} has no catalog; available: "
            + ", ".join(i18n.available_languages())
        )


@lru_cache
def get_settings() -> Settings:
    return Settings()
