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


# --- Archive and click links (app/archive, app/clicks) ------------------------------------------
# One block, so it moves to the catalogs as it is.
ARCHIVE_STRINGS: dict[str, dict[str, str]] = {
    "fr": {
        "archive_title": "Les numéros précédents",
        "archive_intro": "Toutes les newsletters envoyées, de la plus récente à la plus ancienne.",
        "archive_empty": "Aucun numéro n'a encore été envoyé.",
        "archive_newer": "Numéros plus récents",
        "archive_older": "Numéros plus anciens",
        "archive_page": "Page {page} sur {pages}",
        "archive_feed": "Flux Atom des numéros",
        "archive_back": "Tous les numéros",
        "archive_signup": "Recevoir la newsletter",
        "archive_signup_intro": "Ce numéro vous a plu ? Recevez les suivants par e-mail.",
        "archive_not_found_title": "Numéro introuvable",
        "archive_not_found_body": "Ce numéro n'existe pas ou n'est pas public.",
        "archive_read": "Lire l'article",
        "archive_read_label": "Lire l'article : {title}",
        "see_past_issues": "Voir les numéros précédents",
        "click_invalid_body": "Ce lien n'est pas valide : il a peut-être été coupé ou modifié.",
        "go_to_site": "Aller sur le site",
    },
    "en": {
        "archive_title": "Past issues",
        "archive_intro": "Every newsletter sent, newest first.",
        "archive_empty": "No issue has been sent yet.",
        "archive_newer": "Newer issues",
        "archive_older": "Older issues",
        "archive_page": "Page {page} of {pages}",
        "archive_feed": "Atom feed of the issues",
        "archive_back": "All issues",
        "archive_signup": "Get the newsletter",
        "archive_signup_intro": "Liked this issue? Get the next ones by email.",
        "archive_not_found_title": "Issue not found",
        "archive_not_found_body": "This issue does not exist or is not public.",
        "archive_read": "Read the article",
        "archive_read_label": "Read the article: {title}",
        "see_past_issues": "See past issues",
        "click_invalid_body": "This link is not valid: it may have been cut or changed.",
        "go_to_site": "Go to the site",
    },
}
for _language, _strings in ARCHIVE_STRINGS.items():
    STRINGS[_language].update(_strings)
