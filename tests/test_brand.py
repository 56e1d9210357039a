"""Brand settings: a colour readers can read, a name that never says "la newsletter de
Newsletter", a masthead linked to the news site, a clear error at startup."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings, contrast_ratio
from app.mail.render import newsletter_name
from app.subscriptions.delivery import render_confirmation


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, app_env="test", secret_key="x" * 32, **values)


def test_contrast_ratio_is_wcag() -> None:
    assert contrast_ratio("#000000") == pytest.approx(21)
    assert contrast_ratio("#ffffff") == pytest.approx(1)
    assert contrast_ratio("#767676") == pytest.approx(4.54, abs=0.01)  # the lightest AA grey


@pytest.mark.parametrize(
    ("color", "message"),
    [
        ("#f5c518", "BRAND_COLOR #f5c518 has a contrast of 1.6"),
        ("#777777", "contrast of 4.48:1 against white; links and buttons need at least 4.5:1"),
        ("red", "BRAND_COLOR must be a colour like #9b1c1c"),
        ("#12345", "BRAND_COLOR must be a colour like"),
    ],
)
def test_a_brand_colour_too_light_is_refused_by_name(color: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        settings(brand_color=color)


def test_the_startup_error_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRAND_COLOR", "#ffcc00")
    monkeypatch.setenv("DATABASE_URL", "sqlite:///:memory:")
    result = CliRunner().invoke(cli, ["digests", "list"])
    assert result.exit_code == 2
    assert "BRAND_COLOR #ffcc00 has a contrast of" in result.output


def test_other_brand_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="BRAND_LOGO_URL must be an http"):
        settings(brand_logo_url="javascript:alert(1)")
    with pytest.raises(ValidationError, match="DEFAULT_LANGUAGE 'de' has no catalog"):
        settings(default_language="de")


def test_the_newsletter_is_never_named_newsletter() -> None:
    bare = settings()
    assert bare.brand_name == ""
    assert newsletter_name(bare, "fr") == "notre newsletter"
    assert newsletter_name(bare, "en") == "our newsletter"
    from_site = settings(site_url="https://www.dzaleu.com/")
    assert from_site.brand_name == "dzaleu.com"
    assert newsletter_name(from_site, "fr") == "la newsletter de dzaleu.com"
    named = settings(site_name="Dzaleu", site_url="https://www.dzaleu.com/")
    assert newsletter_name(named, "fr") == "la newsletter de Dzaleu"
    rendered = render_confirmation(bare, language="fr", name=None, confirm_url="https://x.fr/c/1")
    assert rendered.subject == "Confirmez votre inscription à notre newsletter"
    assert "de Newsletter" not in rendered.html + rendered.text


def test_masthead_logo_links_to_the_site_and_survives_dark_mode() -> None:
    branded = settings(
        site_name="Dzaleu",
        site_url="https://www.dzaleu.com/",
        brand_logo_url="https://www.dzaleu.com/logo.png",
        brand_color="#004b87",
    )
    html = render_confirmation(
        branded, language="en", name="Ann", confirm_url="https://x.fr/c/1"
    ).html
    assert re.search(
        r'<a href="https://www.dzaleu.com/"[^>]*><img class="logo" height="40" '
        r'src="https://www.dzaleu.com/logo.png" alt="Dzaleu"',
        html,
    )
    assert "#004b87" in html
    # On its own white tile, which the dark scheme keeps white: the logo never sits on black.
    dark = html.split("prefers-color-scheme")[1].split("}}")[0]
    assert ".logo-wrap{background:#fff" in dark.replace(" ", "")
