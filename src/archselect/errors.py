"""The one error type a user can cause: the CLI prints it as one line and exits with code 2."""


class UserError(Exception):
    """Bad input from the user (arch string, config key, file, dataset). Never a bug in archselect."""
