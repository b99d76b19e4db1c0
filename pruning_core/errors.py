class UserError(Exception):
    """Bad input from the user: shown as one clear line, exit status 2 on the CLI."""
