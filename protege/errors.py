"""User-facing errors. Anything a user can get wrong raises one of these with one clear sentence
that says where and what; the CLI turns it into a `click.ClickException`."""


class ProtegeError(Exception):
    """An error caused by user input (a file, a flag, a config) rather than a bug."""


class DataError(ProtegeError):
    """A malformed data file: names the file, the line and the field."""

    def __init__(
        self, source: str, message: str, line: int | None = None, field: str | None = None
    ):
        where = f"{source}:{line}" if line is not None else str(source)
        what = f"field '{field}': {message}" if field else message
        super().__init__(f"{where}: {what}")
        self.source, self.line, self.field = source, line, field


class ConfigError(ProtegeError):
    """A malformed config file or override: names the field."""
