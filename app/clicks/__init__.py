"""Signed click links (/r/{token}) and honest counts: readers apart from machines."""
