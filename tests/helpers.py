"""Small plug-ins the tests pick by class_path, as a user would pick their own."""

from stare_lit.rewards import Reward


class RaisingReward(Reward):
    """A reward function with a bug: it always raises."""

    def __call__(self, prompts, completions, **columns):
        raise RuntimeError("bug in user reward")
