"""The one exception every `gps` command turns into a one-line error with exit code 2."""


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""
