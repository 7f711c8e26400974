"""The one error type users see for bad settings or bad input.

The CLI prints a ``ConfigError`` as a single line (no traceback), so its message must name the
setting (as the user writes it in YAML, e.g. ``model.scheme.init_args.top_ratio``) and the fix.
"""


class ConfigError(ValueError):
    """A setting or an input file is wrong; the message says which and how to fix it."""


def check(condition: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)
