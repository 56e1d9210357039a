"""Digests: compose a draft from recent articles, render it, preview, test and send it."""
