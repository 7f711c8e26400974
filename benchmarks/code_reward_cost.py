"""What a sandboxed code reward costs per completion, against starting a bare Python process.

    python benchmarks/code_reward_cost.py              # ~1 minute on 2 CPU cores
    python benchmarks/code_reward_cost.py --rounds 5

The batch is the built-in code task's 36 reference solutions (stare_lit/data/tasks/data/code_tasks.jsonl,
each scored 1.0 against its 2-4 asserts). Per completion, in rounds that alternate the variants
(A B C, then B C A, ...) so that machine noise hits each alike:

- ``bare python``: ``subprocess.run([python, "-I", "-S", "-c", program + tests])``: no limits,
  no namespaces, no verdict channel: the floor any process-per-completion reward pays;
- ``CodeTestReward asserts``: one sandboxed run (cgroups, seven namespaces, the uid map, the
  minimal root and pivot_root, a new keyring, limits), each test decided by the judge outside it
  from the plain values the run sends back (one request per program expression);
- ``CodeTestReward stdio``: a program that reads one line, one sandboxed run per test.

Reported: median and min-max seconds per completion over all completions of all rounds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from common import header, load, median, spread, table, write_result  # noqa: E402

from stare_lit.rewards import CodeTestReward, StdioTests  # noqa: E402
from stare_lit.sandbox import probe  # noqa: E402
from stare_lit.data.tasks.code import TASKS  # noqa: E402


def bare(row: dict) -> float:
    subprocess.run([sys.executable, "-I", "-S", "-c", row["solution"] + "\n" + "\n".join(row["tests"])], check=True,
                   capture_output=True)
    return 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = [json.loads(line) for line in TASKS.read_text().splitlines()]
    asserts = CodeTestReward(extract="whole")
    stdio = CodeTestReward(extract="whole", tests=StdioTests())
    stdio_program = "import sys\nsys.stdin.readline()\nprint('ok')\n"
    variants = {
        "bare python": lambda row: bare(row),
        "CodeTestReward asserts": lambda row: asserts(["p"], [row["solution"]], tests=[row["tests"]])[0],
        "CodeTestReward stdio (1 test)": lambda row: stdio(["p"], [stdio_program],
                                                           tests=[[{"input": "x\n", "output": "ok\n"}]])[0],
    }
    names = list(variants)
    seconds = {name: [] for name in names}
    loads = [load()]
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            for row in rows:
                started = time.perf_counter()
                assert variants[name](row) == 1.0, (name, row["prompt"])
                seconds[name].append(time.perf_counter() - started)
        loads.append(load())
    floor = median(seconds["bare python"])
    body = table(["variant", "s per completion: median (min–max)", "x bare python", "completions"],
                 [[name, spread(seconds[name]), f"{median(seconds[name]) / floor:.1f}", len(seconds[name])]
                  for name in names])
    text = (header("Code reward cost per completion") + f"- isolation on this machine: {probe()}\n"
            f"- load average (1/5/15 min) before and after each round: {' → '.join(loads)}\n\n{body}\n")
    print(text)
    print(f"written to {write_result('code_reward_cost', text)}")


if __name__ == "__main__":
    main()
