"""CSV cells a spreadsheet will not run: every export of names, addresses, titles or log
lines goes through `spreadsheet_safe`, and the subscriber import undoes it."""

from __future__ import annotations

# A cell starting with one of these is a formula to a spreadsheet (OWASP "CSV injection"); names
# come from the public form, and an address may start with `=`, `+` or `-` too.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: str) -> str:
    """Export: prefix a would-be formula with `'`, which spreadsheets show as text. A value that
    already starts with quotes before such a character gets one more, so `from_spreadsheet_safe`
    gives back exactly what was stored."""
    return "'" + value if value.lstrip("'").startswith(_FORMULA_START) else value


def from_spreadsheet_safe(value: str) -> str:
    """Import: undo `spreadsheet_safe` (drop the one `'` it added), and change nothing else."""
    if value.startswith("'") and value.lstrip("'").startswith(_FORMULA_START):
        return value[1:]
    return value
