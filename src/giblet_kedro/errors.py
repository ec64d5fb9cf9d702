"""Errors a user can act on. The CLI prints them as one clean message, no traceback."""


class GibletError(Exception):
    """Base class: the message alone must tell the user what is wrong and what is accepted."""


class SpecError(GibletError):
    """The experiment spec (or its name) is invalid: names the file and the key path."""


class InputDataError(GibletError):
    """An input file is missing, unreadable or inconsistent: names the file or subject."""
