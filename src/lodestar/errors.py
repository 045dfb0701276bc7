"""User-facing errors.

`UserError` is raised for mistakes a user can fix (bad scenario, unknown name, missing file). The CLI prints its
message on one line and exits with status 2, never a traceback. Messages name the file, line or key, and what was
expected.
"""


class UserError(Exception):
    """A mistake in user input; the message is shown as-is on one line."""
