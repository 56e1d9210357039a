"""The fast SMTP path (app/mail/transport.py) uses aiosmtplib internals, not only its public API:
the protocol object's transport (taken over after login for pipelined transactions) and two
module regexes.
pyproject pins the major version; this fails loudly, naming what moved, if an upgrade changes
them."""

from __future__ import annotations

import inspect
import re

import aiosmtplib
from aiosmtplib import protocol


def test_the_aiosmtplib_internals_the_sender_uses_are_there() -> None:
    assert aiosmtplib.__version__.split(".")[0] == "5", aiosmtplib.__version__
    smtp_protocol = protocol.SMTPProtocol
    assert isinstance(protocol.LINE_ENDINGS_REGEX, re.Pattern)
    assert isinstance(protocol.PERIOD_REGEX, re.Pattern)
    assert protocol.PERIOD_REGEX.sub(b"..", b"a\r\n.b") == b"a\r\n..b"
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=25)
    assert hasattr(client, "protocol")
    assert hasattr(client, "last_ehlo_response")
    assert callable(client.supports_extension)
    assert "transport" in inspect.signature(smtp_protocol.connection_made).parameters
