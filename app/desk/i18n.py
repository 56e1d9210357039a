"""Strings of the desk: one block of English msgids (their translations live in the gettext
catalogs, app/locale/<lang>/LC_MESSAGES/messages.po, like every other string), read by key in
the templates (`t.key`, `t[key]`). Numbers and dates go through Babel's formatters."""

from __future__ import annotations

from datetime import datetime, tzinfo

from babel.dates import format_datetime
from babel.numbers import format_decimal

from app import i18n


def N_(message: str) -> str:
    """Marks a msgid for `pybabel extract` (a default keyword); translated when shown."""
    return message


# --- Desk strings: placeholders are str.format's {name}, filled after translation ------------
DESK_MESSAGES: dict[str, str] = {
    "desk": N_("Desk"),
    "skip": N_("Skip to content"),
    "nav_overview": N_("Overview"),
    "nav_articles": N_("Articles"),
    "nav_compose": N_("Compose"),
    "nav_digests": N_("Digests"),
    "nav_subscribers": N_("Subscribers"),
    "nav_bounces": N_("Bounces and complaints"),
    "nav_settings": N_("Settings"),
    "nav_keys": N_("API keys"),
    "signed_in_as": N_("Signed in: {email}"),
    "logout": N_("Sign out"),
    "login_title": N_("Sign in to the desk"),
    "email": N_("Email address"),
    "password": N_("Password"),
    "login": N_("Sign in"),
    "login_failed": N_("Wrong address or password."),
    "logged_out": N_("You are signed out."),
    "forbidden_title": N_("Action refused"),
    "forbidden_body": N_(
        "The form expired or did not come from the desk. Reload the page and try again."
    ),
    "admin_only": N_("For administrators only."),
    "not_found": N_("Not found."),
    "subscribers_by_status": N_("Subscribers by status"),
    "status": N_("Status"),
    "count": N_("Count"),
    "per_day": N_("Signups and unsubscribes per day (30 days)"),
    "signups": N_("Signups"),
    "unsubscribes": N_("Unsubscribes"),
    "last_digests": N_("Last digests"),
    "delivered": N_("Delivered"),
    "bounced": N_("Bounced"),
    "failed": N_("Failed"),
    "problems": N_("To fix"),
    "no_problems": N_("Nothing to report."),
    "problem_dkim": N_(
        "Messages are not DKIM-signed (DKIM_DOMAIN, DKIM_SELECTOR, DKIM_PRIVATE_KEY_PATH)."
    ),
    "problem_address": N_(
        "ORGANIZATION_ADDRESS is empty: every email must carry a postal address."
    ),
    "problem_site_name": N_("SITE_NAME is not set: emails and pages use {name}."),
    "problem_relay": N_("{count} copies wait for a retry; the relay's last error: {error}"),
    "problem_paused": N_("Digest {id} is paused: {reason}"),
    "search": N_("Search"),
    "search_title": N_("Title contains"),
    "refresh_feed": N_("Read the feed now"),
    "feed_url": N_("Feed address"),
    "feed_imported": N_("Feed read: {created} new, {updated} updated, {unchanged} unchanged."),
    "feed_failed": N_("The feed could not be read: {error}"),
    "title": N_("Title"),
    "published": N_("Published"),
    "categories": N_("Categories"),
    "none": N_("None."),
    "previous": N_("Previous"),
    "next": N_("Next"),
    "page_of": N_("{start}–{end} of {total}"),
    "compose_intro": N_("Tick the articles to send; they go in the order of the numbers."),
    "pick": N_("Pick"),
    "order": N_("Order"),
    "subject": N_("Subject (optional: otherwise each language's default subject)"),
    "create_draft": N_("Create the draft"),
    "no_articles_chosen": N_("Pick at least one article."),
    "digest": N_("Digest {id}"),
    "created": N_("Created"),
    "recipients": N_("Recipients"),
    "progress": N_("Progress"),
    "rate": N_("Rate"),
    "per_second": N_("{rate} / s"),
    "eta": N_("Expected end"),
    "eta_seconds": N_("in {seconds} s"),
    "preview": N_("Preview"),
    "preview_fr": N_("French preview"),
    "preview_en": N_("English preview"),
    "width_desktop": N_("Desktop"),
    "width_phone": N_("Phone"),
    "width": N_("Preview width"),
    "send_test": N_("Send me a test"),
    "test_queued": N_("Test sent to {email}."),
    "language": N_("Language"),
    "send": N_("Send"),
    "send_confirm": N_("I confirm sending to {count} readers"),
    "send_confirm_missing": N_("Tick the confirmation to send."),
    "sent_queued": N_("Sending to {count} readers."),
    "pause": N_("Pause"),
    "resume": N_("Resume"),
    "cancel": N_("Cancel the send"),
    "paused_reason": N_("Paused: {reason}"),
    "conflict": N_("Not possible: {detail}"),
    "articles_of_digest": N_("Articles"),
    "st_draft": N_("draft"),
    "st_sending": N_("sending"),
    "st_paused": N_("paused"),
    "st_sent": N_("sent"),
    "st_cancelled": N_("cancelled"),
    "st_pending": N_("pending"),
    "st_confirmed": N_("confirmed"),
    "st_unsubscribed": N_("unsubscribed"),
    "st_bounced": N_("bounced"),
    "st_complained": N_("complained"),
    "all_statuses": N_("All statuses"),
    "filter": N_("Filter"),
    "search_subscriber": N_("Address or name contains"),
    "name": N_("Name"),
    "signed_up": N_("Signed up"),
    "export": N_("Export as CSV"),
    "import": N_("Import a CSV"),
    "import_file": N_("CSV file (email, name, language)"),
    "import_confirmed": N_("These readers consented already (no confirmation email)"),
    "import_button": N_("Import"),
    "importing": N_("Importing…"),
    "import_done": N_(
        "Imported: {added}; already subscribed: {already}; suppressed, not revived: {suppressed}; rejected lines: {rejected}."
    ),
    "import_failed": N_("Import not possible: {error}"),
    "line_error": N_("line {line}: {message}"),
    "consent": N_("Consent"),
    "consent_at": N_("Date"),
    "consent_source": N_("Source"),
    "consent_ip": N_("IP address"),
    "consent_user_agent": N_("Browser"),
    "history": N_("History"),
    "deliveries": N_("Deliveries"),
    "bounces": N_("Bounces"),
    "when": N_("When"),
    "event": N_("Event"),
    "detail": N_("Detail"),
    "kind": N_("Kind"),
    "reason": N_("Reason"),
    "unsubscribe": N_("Unsubscribe this reader"),
    "erase": N_("Erase their data (GDPR)"),
    "erase_confirm": N_("I confirm the erasure for good"),
    "unsubscribed_done": N_("{email} is unsubscribed."),
    "erased_done": N_("The subscriber's data was erased."),
    "bounce_log": N_("Bounces and complaints log"),
    "subscriber": N_("Subscriber"),
    "suppressed": N_("Off the list"),
    "yes": N_("yes"),
    "no": N_("no"),
    "erased": N_("(erased)"),
    "settings_intro": N_(
        "Read-only: the configuration changes in the service's environment. Secrets are masked."
    ),
    "setting": N_("Setting"),
    "value": N_("Value"),
    "keys_intro": N_("Keys give access to the editor API. A key is shown once."),
    "key_name": N_("Key name"),
    "create_key": N_("Create a key"),
    "key_created": N_("Key “{name}” (copy it now, it will not be shown again):"),
    "revoke": N_("Revoke"),
    "revoked": N_("revoked"),
    "prefix": N_("Starts with"),
    "last_used": N_("Last used"),
    "active": N_("active"),
    "subject_fr": N_("Subject in French (optional: otherwise the default subject)"),
    "subject_en": N_("Subject in English (optional: otherwise the default subject)"),
    "intro_fr": N_("Introduction in French (optional)"),
    "intro_en": N_("Introduction in English (optional)"),
    "save_draft": N_("Save the draft"),
    "draft_saved": N_("Draft saved."),
    "edit_draft": N_("Subject and introduction"),
    "hide": N_("Hide"),
    "unhide": N_("Show again"),
    "delete": N_("Delete"),
    "hidden": N_("hidden"),
    "article_deleted": N_("Article deleted."),
    "actions": N_("Actions"),
    "subject_short": N_("Subject"),
    "bounce_rate": N_("Bounce rate"),
    "complaint_rate": N_("Complaint rate"),
    "throttled": N_("the relay is slowing us down"),
    "nav_schedules": N_("Schedules"),
    "schedule_name": N_("Name"),
    "schedule_cron": N_("When (cron, five fields)"),
    "schedule_timezone": N_("Time zone"),
    "schedule_cadence": N_("Readers' cadence"),
    "cadence_daily": N_("daily"),
    "cadence_weekly": N_("weekly"),
    "schedule_min": N_("At least this many new articles"),
    "schedule_max": N_("At most this many articles"),
    "schedule_categories": N_("Categories (comma-separated; empty: all)"),
    "schedule_enabled": N_("Enabled"),
    "schedule_on": N_("enabled"),
    "schedule_off": N_("disabled"),
    "schedule_next": N_("Next run"),
    "schedule_runs": N_("Last runs"),
    "schedule_edit": N_("Edit"),
    "schedule_enable": N_("Enable"),
    "schedule_disable": N_("Disable"),
    "schedule_new": N_("New schedule"),
    "schedule_create": N_("Create the schedule"),
    "schedule_save": N_("Save the schedule"),
    "numbers": N_("Numbers"),
    "unsubscribed_after": N_("Unsubscribed after"),
    "clicks": N_("Clicks"),
    "clicks_unique": N_("Readers who clicked"),
    "clicks_machine": N_("Machine clicks (not counted)"),
    "opens": N_("Opens"),
    "opens_unique": N_("Readers who opened"),
    "mpp_warning": N_(
        "Apple Mail Privacy Protection and other image proxies fetch every copy's images when "
        "the message arrives: opens are inflated and say little."
    ),
    "clicks_csv": N_("Download the clicks per article (CSV)"),
    "tracking_off": N_("Click tracking is off (TRACK_CLICKS=off): no clicks are counted."),
    "article": N_("Article"),
    "schedule_send_title": N_("Or schedule the send"),
    "send_at": N_("Date and time ({zone})"),
    "schedule_send": N_("Schedule the send"),
    "schedule_confirm": N_("I confirm: send it at that time (to {count} readers today)"),
    "scheduled_for": N_("Scheduled for {when} ({zone})"),
    "unschedule": N_("Unschedule"),
    "send_at_invalid": N_("Pick a date and a time."),
    "send_at_past": N_("Pick a time in the future, at most a year ahead."),
    "done_scheduled": N_("The send is scheduled."),
    "done_unscheduled": N_("The send is no longer scheduled: the digest is a draft."),
}
# --- end of the desk strings -------------------------------------------------------------------


class DeskText:
    """The desk's strings in one language: `t.title`, `t["st_" + status]`, `t.get(key)`."""

    def __init__(self, language: str) -> None:
        self._code = language  # not `language`: that is a string's key (t.language)

    def __getitem__(self, key: str) -> str:
        return i18n.translate(self._code, DESK_MESSAGES[key])

    def __getattr__(self, key: str) -> str:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def get(self, key: str) -> str | None:
        return self[key] if key in DESK_MESSAGES else None


def format_number(value: float | int, lang: str) -> str:
    return format_decimal(value, locale=lang)


def format_when(value: datetime | None, lang: str, zone: tzinfo | None = None) -> str:
    """In UTC, or in `zone` (DESK_TIMEZONE for a scheduled send: the editor's clock)."""
    if value is None:
        return "—"
    return format_datetime(value, format="short", tzinfo=zone, locale=lang)
