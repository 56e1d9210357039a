"""normalize_email's fast path for plain addresses (a million-row import) says exactly what
email_validator says, on any input: same address, or an error on both sides."""

from __future__ import annotations

import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.addresses import InvalidEmail, _validated, normalize_email

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~"


def library(raw: str) -> str | None:
    """The slow twin: every address through email_validator."""
    raw = raw.strip()
    try:
        if not raw or len(raw) > 320:
            raise InvalidEmail("")
        return _validated(raw, check_deliverability=False)
    except InvalidEmail:
        return None


def ours(raw: str) -> str | None:
    try:
        return normalize_email(raw)
    except InvalidEmail:
        return None


labels = st.text(alphabet=string.ascii_letters + string.digits + "-", min_size=0, max_size=70)
domains = st.lists(labels, min_size=1, max_size=5).map(".".join) | st.sampled_from(
    ["example.org", "Example.ORG", "localhost", "xn--bcher-kva.ch", "bücher.ch", "[127.0.0.1]"]
)
locals_ = st.text(alphabet=ATEXT + '."(),:;<>@[\\] é', min_size=0, max_size=70)


@settings(max_examples=600, deadline=None)
@given(address=st.emails() | st.builds(lambda a, b: f"{a}@{b}", locals_, domains))
@example(address="Jean-Pierre.Ndongo@Example.CM")
@example(address="a..b@example.org")
@example(address=".a@example.org")
@example(address="a.@example.org")
@example(address="a@example")
@example(address="a@-example.org")
@example(address="a@example.org.")
@example(address="a" * 64 + "@example.org")
@example(address="a" * 65 + "@example.org")
@example(address="a@" + ".".join(["b" * 63] * 4))
@example(address="a@b@example.org")
@example(address="a@test")
@example(address="a@example.invalid")
@example(address="a@xn--bcher-kva.ch")
def test_the_fast_path_agrees_with_the_library(address: str) -> None:
    assert ours(address) == library(address)


def test_a_plain_address_keeps_its_local_part_and_lowers_its_domain() -> None:
    assert normalize_email(" Ghost4@Example.ORG ") == "Ghost4@example.org"
    with pytest.raises(InvalidEmail):
        normalize_email("ghost..4@example.org")
