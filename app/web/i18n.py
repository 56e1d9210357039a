"""Strings of the public pages, per language, and the choice of language for a request."""

from __future__ import annotations

from fastapi import Request

from app.models import Language

STRINGS: dict[str, dict[str, str]] = {
    "fr": {
        "subscribe_title": "Inscription à la newsletter",
        "subscribe_intro": "Recevez chaque semaine une sélection de nos articles. "
        "Vous pourrez vous désinscrire en un clic.",
        "email_label": "Adresse e-mail",
        "name_label": "Prénom ou nom (facultatif)",
        "submit": "Je m'inscris",
        "honeypot_label": "Ne pas remplir ce champ",
        "errors_title": "Le formulaire contient une erreur.",
        "email_invalid": "Cette adresse e-mail n'est pas valide.",
        "name_too_long": "Le nom ne doit pas dépasser 200 caractères.",
        "check_title": "Vérifiez votre boîte de réception",
        "check_body": "Si cette adresse peut recevoir notre newsletter, un e-mail de confirmation "
        "vient de lui être envoyé. Cliquez sur le lien qu'il contient pour confirmer votre "
        "inscription.",
        "confirm_title": "Confirmez votre inscription",
        "confirm_body": "Un instant : nous confirmons votre inscription. Si rien ne se passe, "
        "appuyez sur le bouton.",
        "confirm_button": "Confirmer mon inscription",
        "confirmed_title": "Inscription confirmée",
        "confirmed_body": "Merci ! Vous recevrez désormais notre newsletter.",
        "invalid_title": "Lien invalide ou expiré",
        "invalid_body": "Ce lien n'est pas valide ou a expiré. Vous pouvez vous inscrire à nouveau.",
        "expired_body": "Ce lien de confirmation a expiré. Inscrivez-vous à nouveau pour recevoir "
        "un nouveau lien.",
        "signup_again": "S'inscrire à nouveau",
        "unsubscribe_title": "Se désinscrire",
        "unsubscribe_body": "Vous ne recevrez plus la newsletter de {site}.",
        "unsubscribe_button": "Me désinscrire",
        "unsubscribed_title": "Vous êtes désinscrit",
        "unsubscribed_body": "Vous ne recevrez plus aucun e-mail de notre part.",
        "resubscribe_intro": "Une erreur ? Vous pouvez vous réinscrire.",
        "resubscribe_button": "Me réinscrire",
        "resubscribed_title": "Vous êtes réinscrit",
        "resubscribed_body": "Bon retour parmi nous ! Vous recevrez à nouveau la newsletter.",
        "rate_limited_title": "Trop de demandes",
        "rate_limited_body": "Veuillez réessayer dans quelques minutes.",
        "footer": "Vos données ne servent qu'à vous envoyer cette newsletter.",
    },
    "en": {
        "subscribe_title": "Subscribe to the newsletter",
        "subscribe_intro": "Get a weekly selection of our articles. You can leave with one click.",
        "email_label": "Email address",
        "name_label": "Name (optional)",
        "submit": "Subscribe",
        "honeypot_label": "Leave this field empty",
        "errors_title": "The form has an error.",
        "email_invalid": "This email address is not valid.",
        "name_too_long": "The name must be at most 200 characters.",
        "check_title": "Check your inbox",
        "check_body": "If this address can receive our newsletter, a confirmation email has just "
        "been sent to it. Open the link it contains to confirm your subscription.",
        "confirm_title": "Confirm your subscription",
        "confirm_body": "One moment: we are confirming your subscription. If nothing happens, "
        "press the button.",
        "confirm_button": "Confirm my subscription",
        "confirmed_title": "Subscription confirmed",
        "confirmed_body": "Thank you! You will now receive our newsletter.",
        "invalid_title": "Invalid or expired link",
        "invalid_body": "This link is not valid or has expired. You can sign up again.",
        "expired_body": "This confirmation link has expired. Sign up again to get a new link.",
        "signup_again": "Sign up again",
        "unsubscribe_title": "Unsubscribe",
        "unsubscribe_body": "You will no longer receive the {site} newsletter.",
        "unsubscribe_button": "Unsubscribe me",
        "unsubscribed_title": "You are unsubscribed",
        "unsubscribed_body": "You will receive no more emails from us.",
        "resubscribe_intro": "A mistake? You can subscribe again.",
        "resubscribe_button": "Subscribe again",
        "resubscribed_title": "You are subscribed again",
        "resubscribed_body": "Welcome back! You will receive the newsletter again.",
        "rate_limited_title": "Too many requests",
        "rate_limited_body": "Please try again in a few minutes.",
        "footer": "Your data is used only to send you this newsletter.",
    },
}

# --- Cadence, topics and preferences (issue 15: signup choices, /preferences/{token}) ----------
# Kept apart so that they move to the Babel catalogs in one piece.
_PREFERENCE_STRINGS: dict[str, dict[str, str]] = {
    "fr": {
        "cadence_label": "Fréquence",
        "cadence_daily": "Chaque jour",
        "cadence_weekly": "Chaque semaine",
        "topics_label": "Sujets (aucun coché : tous les sujets)",
        "cadence_invalid": "Choisissez une fréquence proposée.",
        "topics_invalid": "Choisissez parmi les sujets proposés.",
        "preferences_title": "Vos préférences",
        "preferences_intro": "Choisissez à quelle fréquence et sur quels sujets vous recevez "
        "la newsletter de {site}.",
        "language_label": "Langue",
        "language_fr": "Français",
        "language_en": "English",
        "preferences_save": "Enregistrer",
        "preferences_saved": "Vos préférences sont enregistrées.",
        "preferences_unsubscribe": "Ne plus rien recevoir : se désinscrire",
        "preferences_inactive": "Vous n'êtes pas inscrit : vos choix seront gardés si vous "
        "vous réinscrivez.",
    },
    "en": {
        "cadence_label": "How often",
        "cadence_daily": "Every day",
        "cadence_weekly": "Every week",
        "topics_label": "Topics (none ticked: every topic)",
        "cadence_invalid": "Choose one of the offered frequencies.",
        "topics_invalid": "Choose among the offered topics.",
        "preferences_title": "Your preferences",
        "preferences_intro": "Choose how often and about what you receive the {site} newsletter.",
        "language_label": "Language",
        "language_fr": "Français",
        "language_en": "English",
        "preferences_save": "Save",
        "preferences_saved": "Your preferences are saved.",
        "preferences_unsubscribe": "Receive nothing more: unsubscribe",
        "preferences_inactive": "You are not subscribed: your choices are kept should you "
        "subscribe again.",
    },
}
for _lang, _strings in _PREFERENCE_STRINGS.items():
    STRINGS[_lang].update(_strings)
# --- end of the cadence, topics and preferences strings ---------------------------------------

SUPPORTED = tuple(lang.value for lang in Language)


def parse_accept_language(header: str | None) -> str | None:
    """The first supported language by the header's q-values, or None."""
    if not header:
        return None
    choices: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        primary = tag.strip().lower().split("-")[0]
        if primary in SUPPORTED and quality > 0:
            choices.append((-quality, index, primary))
    return min(choices)[2] if choices else None


def request_language(request: Request, explicit: str | None = None) -> str:
    for candidate in (explicit, request.query_params.get("lang")):
        if candidate and candidate.lower() in SUPPORTED:
            return candidate.lower()
    return parse_accept_language(request.headers.get("accept-language")) or Language.fr.value
