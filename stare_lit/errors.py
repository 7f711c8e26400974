"""The errors users see: each is printed by the CLI as one line (no traceback).

So a message must name the setting (as the user writes it in YAML, e.g.
``model.scheme.init_args.top_ratio``) or the input at fault, and the fix.
"""


class StareLitError(Exception):
    """An error the user can act on; ``stare-lit`` prints its message as one line and exits with 1."""


class ConfigError(StareLitError, ValueError):
    """A setting or an input file is wrong; the message says which and how to fix it."""


class NonFiniteError(StareLitError, RuntimeError):
    """Training met NaN/±inf for ``model.update.max_nonfinite_steps`` steps in a row; the last good state was saved."""


def check(condition: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)
