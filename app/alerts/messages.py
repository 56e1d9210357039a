"""What an alert says, in French and English: the one block of alert strings (kept together so
they move to the Babel catalogs in one piece). `{…}` fields come from the incident's params."""

from __future__ import annotations

from typing import Any

# kind -> language -> (subject, body). The body's paragraphs are separated by blank lines.
MESSAGES: dict[str, dict[str, tuple[str, str]]] = {
    "send_paused": {
        "fr": (
            "[{site}] Envoi {digest_id} mis en pause",
            "L'envoi de la lettre {digest_id} s'est mis en pause tout seul.\n\n"
            "Raison : {reason}\n\n"
            "Corrigez la cause, puis reprenez l'envoi : "
            "POST {public_url}/api/v1/digests/{digest_id}/resume",
        ),
        "en": (
            "[{site}] Send {digest_id} paused",
            "The send of digest {digest_id} paused itself.\n\n"
            "Reason: {reason}\n\n"
            "Fix the cause, then resume the send: "
            "POST {public_url}/api/v1/digests/{digest_id}/resume",
        ),
    },
    "setup_broken": {
        "fr": (
            "[{site}] Un envoyeur refuse de démarrer",
            "Un processus d'envoi ({process}) refuse de démarrer : rien ne part tant que ce "
            "n'est pas corrigé.\n\n"
            "Raison : {error}",
        ),
        "en": (
            "[{site}] A sender refuses to start",
            "A sending process ({process}) refuses to start: nothing goes out until this is "
            "fixed.\n\n"
            "Reason: {error}",
        ),
    },
    "feed_failing": {
        "fr": (
            "[{site}] Le flux échoue depuis {failures} relevés",
            "Les {failures} derniers relevés du flux {url} ont échoué.\n\n"
            "Dernière erreur : {error}\n\n"
            "Aucun nouvel article n'arrive tant que le flux échoue.",
        ),
        "en": (
            "[{site}] The feed has failed {failures} polls in a row",
            "The last {failures} polls of the feed {url} failed.\n\n"
            "Last error: {error}\n\n"
            "No new article arrives while the feed fails.",
        ),
    },
    "schedule_failed": {
        "fr": (
            "[{site}] La programmation « {name} » a échoué",
            "Le passage du {slot} de la programmation « {name} » (n° {schedule_id}) a échoué.\n\n"
            "Erreur : {error}",
        ),
        "en": (
            "[{site}] Schedule “{name}” failed",
            "The {slot} run of schedule “{name}” (id {schedule_id}) failed.\n\nError: {error}",
        ),
    },
    "bounce_rate": {
        "fr": (
            "[{site}] Envoi {digest_id} : {rate} de rebonds",
            "L'envoi de la lettre {digest_id} a {bounced} rebonds sur {attempted} tentatives "
            "({rate}), au-delà du seuil d'alerte de {line}.\n\n"
            "Une liste ancienne ou importée ? Regardez les rebonds avant le prochain envoi.",
        ),
        "en": (
            "[{site}] Send {digest_id}: {rate} bounced",
            "The send of digest {digest_id} has {bounced} bounces in {attempted} attempts "
            "({rate}), past the warning line of {line}.\n\n"
            "An old or imported list? Look at the bounces before the next send.",
        ),
    },
}


class _Lenient(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


def alert_text(kind: str, language: str, params: dict[str, Any]) -> tuple[str, str]:
    """(subject, plain-text body) of an alert; an unknown kind or field never raises."""
    by_language = MESSAGES.get(kind) or {
        "fr": ("[{site}] Alerte", "{params}"),
        "en": ("[{site}] Alert", "{params}"),
    }
    subject, body = by_language.get(language) or by_language["en"]
    values = _Lenient(params, params=params)
    return subject.format_map(values), body.format_map(values)
