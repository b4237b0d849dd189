"""The one exception type that reaches users as a single line (exit code 2), never as a traceback."""


class GenrecError(Exception):
    """Bad input or a state the user can fix; the CLI prints `error: <message>` and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
