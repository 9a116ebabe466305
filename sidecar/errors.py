"""Errors shared across modules."""


class SetupError(Exception):
    """A file the config names cannot be used (certificate, key, bundle); the message names it.

    Found at start-up or on reload; the CLI exits 2 with it, a reload is rejected with it."""
