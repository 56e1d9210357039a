"""Alerts: telling the editors, once per incident, what needs a person."""
