"""User-facing errors: one paragraph that names the problem and the fix, never a traceback."""


class UserError(Exception):
    """Bad input the user can fix (config, files, hardware); the CLI prints it and exits non-zero."""
