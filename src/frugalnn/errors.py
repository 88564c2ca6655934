"""Errors caused by the user's input (bad name, shape, file, budget).

The CLI prints a ``UserError`` as one line and exits with status 2; anything
else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input from the user; the message says what is wrong and how to fix it."""
