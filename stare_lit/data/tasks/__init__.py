"""Built-in tasks, each generated or shipped with the package: prompts, a verifier, warm-start data.

``arithmetic``: column-wise addition (no forks); ``partial_sums``: running sums in any order (24 correct
orders, the forking task); ``countdown``: reach a target from given numbers with + − × ÷ (few correct
completions per prompt: a task where exploration matters); ``code``: 36 small Python functions with unit tests."""
