"""Articles: feed import (RSS/Atom), sanitising, upsert and the editor API."""
