"""The browser fixtures of the signup tests (headless Chromium, the app served by uvicorn)."""

from tests.subscriptions.test_browser import browser, live_app  # noqa: F401
