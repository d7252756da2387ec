"""Errors a user can act on.

Every error that reaches the command line is a :class:`BirdnetError` whose message
names the file (or setting) and the problem; the CLI prints it on one line and
exits with status 2 instead of showing a traceback.
"""


class BirdnetError(Exception):
    """A problem with the user's input: a file, a setting or a path."""


class AudioDecodeError(BirdnetError):
    """An audio file could not be read or holds no usable samples."""


class CatalogError(BirdnetError):
    """A dataset folder or its metadata cannot be turned into a catalog."""


class ConfigError(BirdnetError):
    """A recipe or override names an unknown or invalid setting."""


def about(path, reason: str) -> str:
    """``"PATH: REASON"``, naming the file once when ``reason`` already starts with it."""
    path, reason = str(path), str(reason)
    return reason if reason.startswith(f"{path}: ") or reason.startswith(f"{path} ") else f"{path}: {reason}"
