"""The errors users see: each is printed by the CLI as one line (no traceback).

So a message must name the setting (as the user writes it in YAML, e.g.
``model.scheme.init_args.top_ratio``) or the input at fault, and the fix. ``qualified`` and ``short``
help write one: the class path of a plug-in, a user's value cut to a readable length.
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


def qualified(obj: object) -> str:
    """``my_pkg.MyReward``: the class of ``obj`` as a YAML ``class_path`` names it, for a message about a plug-in."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def short(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters (ending in ``...``): a message quoting a user's value stays readable."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
