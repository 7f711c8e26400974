"""Whose code raised: an error from a user's reward, scheme or callback keeps its traceback, with one
line first naming the object (``stare-lit: the reward my_pkg.MyReward raised:``).

The user needs the traceback to fix their code, and a bare Lightning traceback does not say which
plug-in of the YAML the failing frame belongs to. stare-lit's own errors (bad settings) stay one
line without a traceback (``stare_lit.errors``).
"""

from __future__ import annotations

import sys
import traceback

import lightning as L

from stare_lit.errors import StareLitError, qualified
from stare_lit.rewards.base import Reward
from stare_lit.schemes.base import TokenWeighting


def kind_of(obj: object) -> str | None:
    """'reward', 'scheme', 'callback' or 'data module' for a plug-in picked in the YAML; None otherwise."""
    if isinstance(obj, Reward):
        return "reward"
    if isinstance(obj, TokenWeighting):
        return "scheme"
    module = type(obj).__module__
    if module.startswith(("lightning.", "pytorch_lightning.")):
        return None  # Lightning's own machinery is not a plug-in
    if isinstance(obj, L.Callback):
        return "callback"
    if isinstance(obj, L.LightningDataModule):
        return "data module"
    return None


def owner(error: BaseException) -> str | None:
    """'the callback my_pkg.MyCallback' for the innermost plug-in method in ``error``'s traceback, if any."""
    frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)]
    for frame in reversed(frames):
        obj = frame.f_locals.get("self")
        kind = kind_of(obj) if obj is not None else None
        if kind is not None:
            return f"the {kind} {qualified(obj)}"
    return None


def announce(error: BaseException) -> None:
    """Print the line naming whose code raised ``error`` (before Python prints its traceback)."""
    who = owner(error)
    if who is not None:
        print(f"stare-lit: {who} raised:", file=sys.stderr, flush=True)


def print_kept_traceback(error: BaseException) -> None:
    """A stare-lit error about a user's code (a ``RewardError``) carries that code's traceback: print it,
    headed by whose code it is, before the one-line error."""
    text, who = getattr(error, "user_traceback", None), getattr(error, "owner", None)
    cause = error.__cause__
    if not text and cause is not None and not isinstance(cause, StareLitError):  # raised ... from the user's error
        text, who = "".join(traceback.format_exception(cause)), who or owner(cause)
    if text:
        print(f"stare-lit: {who or 'user code'} raised:\n{text.rstrip()}", file=sys.stderr, flush=True)
