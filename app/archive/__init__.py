"""The public archive: sent digests as web pages and an Atom feed, without personal data."""
