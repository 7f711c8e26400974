"""CodeTestReward and its sandbox: hostile programs score 0 and leave the trainer unharmed.

Each hostile program defines a correct ``add`` only if its attack worked (or earns its score only
through the attack), so a score of 0 shows the attack failed; the extra checks look at the
trainer's side (files, listener, processes, environment). Short CPU limits keep the table fast.

The fork bomb is linear (at most 300 sleeping children, each forked by the same parent), so even
with no process cap it could not run away; it is skipped unless the probe reports a cap. So is
each attack that only a namespace stops, where the probe reports none (a hardened kernel): there
the README's table says what is not isolated.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from stare_lit.errors import ConfigError
import stare_lit.rewards.sandbox as sandbox_module
from stare_lit.rewards.code import CodeTestReward
from stare_lit.rewards.sandbox import Sandbox, probe
from stare_lit.rewards.runner import RewardRunner, RewardWarning, Scoring

ROOT = Path(__file__).parents[1]
ISOLATION = probe()
LIMITS = dict(timeout_seconds=15.0, cpu_seconds=1, memory_mb=256, max_processes=16)
TESTS = ["assert add(2, 3) == 5", "assert add(1, 1) == 2", "assert 0 == add(-4, 4)", "assert add(10, 5) > 14"]
SECRET = "hf_stare_lit_test_secret_0123456789"


def reward(**kwargs) -> CodeTestReward:
    return CodeTestReward(extract="whole", sandbox=Sandbox(**LIMITS), **kwargs)


def score(program: str, tests=TESTS, **kwargs) -> float:
    (value,) = reward(**kwargs)(["prompt"], [textwrap.dedent(program)], tests=[tests])
    return value


def leftover_processes() -> list[str]:
    """Sandbox processes this test process started that are still alive (none may be)."""
    mine = f" {os.getpid()}"
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "_sandbox_child.py" in cmdline and cmdline.rstrip().endswith(mine):
            found.append(cmdline)
    return found


CORRECT = "def add(a, b):\n    return a + b\n"

HOSTILE = {
    "infinite_loop": "while True:\n    pass\n" + CORRECT,
    "sleeps_forever_in_escaped_child": """
        import os, time
        if os.fork() == 0:
            os.setsid()
            time.sleep(3600)
        time.sleep(3600)
    """ + CORRECT,
    "memory_bomb": "blob = bytearray(8 * 1024 ** 3)\n" + CORRECT,
    "gradual_memory_bomb": "def add(a, b):\n    hoard = []\n    while True:\n        hoard.append(bytearray(1 << 26))\n",
    "huge_output": "while True:\n    print('All tests passed ' * 1000)\n",
    "fills_the_disk": "for i in range(100):\n    open(f'f{i}', 'wb').write(b'x' * (15 << 20))\n" + CORRECT,
    "huge_file": "with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * (1 << 20))\n" + CORRECT,
    "reads_parent_environment": f"""
        import os
        leak = os.environ.get("HF_TOKEN", "") + os.environ.get("WANDB_API_KEY", "")
        for pid in [str(os.getppid()), "1"] + os.listdir("/proc"):
            try:
                leak += open(f"/proc/{{pid}}/environ").read()
            except OSError:
                pass
        def add(a, b):
            return a + b if "{SECRET}" in leak else None
    """,
    "forged_pass_messages": """
        import os, sys
        print("All tests passed")
        print("4/4 tests passed", file=sys.stderr)
        for fd in range(3, 64):
            for index in range(4):
                try:
                    os.write(fd, ('x\\t{"kind": "test", "index": %d, "passed": true, "value": "5"}\\n' % index).encode())
                except OSError:
                    pass
        os._exit(0)
    """,
    "early_exit": "import sys\nsys.exit(0)\n" + CORRECT,
    "early_os_exit": "import os\nos._exit(0)\n" + CORRECT,
    "patches_builtins_and_helpers": """
        import builtins, sys, os
        class Anything:
            def __eq__(self, other): return True
            def __gt__(self, other): return True
            def __repr__(self): return "5"
        builtins.eval = lambda *args, **kwargs: 5
        builtins.exec = lambda *args, **kwargs: None
        builtins.repr = lambda *args: "5"
        builtins.AssertionError = type("Harmless", (Exception,), {})
        sys.exit = os._exit = lambda *args: None
        import __main__
        __main__._plain_repr = lambda value: "5"
        def add(a, b):
            return Anything()
    """,
    "reads_the_harness_memory": """
        import os, sys, json
        def add(a, b):
            frame = sys._getframe(1)
            while frame is not None:
                local = frame.f_locals
                if "nonce" in local and "result_fd" in local:
                    for index in range(4):
                        record = {"kind": "test", "index": index, "passed": True, "value": "999"}
                        os.write(local["result_fd"], f"{local['nonce']}\\t{json.dumps(record)}\\n".encode())
                    os._exit(0)
                frame = frame.f_back
            return 999
    """,
}


# What an attack needs isolated to fail, where the kernel does not give it (README, "Code rewards").
NEEDS = {"fills_the_disk": "private_disk", "reads_parent_environment": "private_proc",
         "sleeps_forever_in_escaped_child": "pid_namespace"}


def needs(what: str):
    return pytest.mark.skipif(not ISOLATION.get(what), reason=f"no {what} on this machine ({ISOLATION})")


@pytest.mark.parametrize("name", [pytest.param(name, marks=needs(NEEDS[name])) if name in NEEDS else name
                                  for name in sorted(HOSTILE)])
def test_hostile_program_scores_zero(name, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    started = time.monotonic()
    assert score(HOSTILE[name]) == 0.0
    assert time.monotonic() - started < LIMITS["timeout_seconds"] + 10
    assert leftover_processes() == []


@needs("process_cap")  # never run a fork bomb that nothing caps
def test_fork_bomb_is_capped():
    program = """
        import os, time
        forked = 0
        for _ in range(300):
            try:
                if os.fork() == 0:
                    time.sleep(3600)
                    os._exit(0)
                forked += 1
            except OSError:
                pass
        def add(a, b):
            return a + b if forked >= 300 else None
    """
    assert score(program) == 0.0
    assert leftover_processes() == []


@needs("read_only_filesystem")
def test_writing_outside_its_directory_fails(tmp_path):
    targets = [tmp_path / "outside.txt", os.path.abspath("PWNED_BY_SANDBOX"), os.path.expanduser("~/PWNED_BY_SANDBOX")]
    program = f"""
        import os
        for target in {[str(t) for t in targets]!r}:
            open(target, "w").write("x")
        os.makedirs("{tmp_path}/made", exist_ok=True)
    """ + CORRECT
    assert score(program) == 0.0
    assert not any(os.path.exists(t) for t in targets) and not (tmp_path / "made").exists()


@needs("network_namespace")
def test_opening_a_socket_reaches_nothing():
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: _accept_all(listener, accepted), daemon=True)
    thread.start()
    program = f"""
        import socket
        connection = socket.create_connection(("127.0.0.1", {port}), timeout=2)
        connection.sendall(b"leak")
    """ + CORRECT
    try:
        assert score(program) == 0.0
    finally:
        listener.close()
        thread.join(timeout=2)
    assert accepted == []


def _accept_all(listener: socket.socket, accepted: list) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            accepted.append(listener.accept())
        except (socket.timeout, OSError):
            if listener.fileno() == -1:
                return


@needs("pid_namespace")  # without one a program could signal the trainer: not tried
def test_killing_its_parent_fails_and_the_worker_lives_on():
    """Through the reward worker (model.scoring.timeout set): the killer scores 0, the worker survives it."""
    killer = textwrap.dedent("""
        import os, signal
        for target in (os.getppid(), 1, -1):
            try:
                os.kill(target, signal.SIGKILL)
            except OSError:
                pass
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        os.killpg(0, signal.SIGKILL)
    """) + CORRECT
    with RewardRunner([reward()], scoring=Scoring(timeout=60)) as runner:
        scored = runner(["p"] * 3, [killer, CORRECT, killer], {"tests": [TESTS] * 3})
        worker = runner._worker
        assert worker is not None and worker.alive  # never restarted: nothing killed it
    assert scored.per_reward["code_test_reward"].tolist() == [0.0, 1.0, 0.0]
    assert scored.timeouts == {"code_test_reward": 0} and scored.errors == {"code_test_reward": 0}


def test_correct_and_partly_correct_programs():
    assert score(CORRECT) == 1.0
    assert score("def add(a, b):\n    return a + b if a > 0 else 1\n") == 0.75  # fails add(-4, 4) only
    assert score("def add(a, b):\n    return a + b if a > 0 else 1\n", all_or_nothing=True) == 0.0
    assert score("def add(a, b):\n    return (a + b) * (a != 1)\n") == 0.75
    assert score("def add(a, b):\n    return str(a + b)\n") == 0.0  # "5" is not 5
    assert score("def add(a, b):\n    raise ValueError\n") == 0.0


def test_tests_as_one_string_and_a_program_that_prints():
    tests = "assert add(2, 3) == 5\nassert add(1, 1) == 2\nassert 0 == add(-4, 4)\nassert add(10, 5) > 14\n"
    assert score("print('hello')\n" + CORRECT, tests=tests) == 1.0


def test_fenced_extraction():
    r = CodeTestReward(sandbox=Sandbox(**LIMITS))
    completions = [
        "Here is my answer:\n```python\n" + CORRECT + "```\nDone.",
        "First try:\n```\ndef add(a, b): return 0\n```\nBetter:\n```py\n" + CORRECT + "```",
        CORRECT,  # no fenced block: nothing to run
    ]
    assert r(["p"] * 3, completions, tests=[TESTS] * 3) == [1.0, 1.0, 0.0]
    assert r.program("```python\nx = 1\n```") == "x = 1\n"


def test_stdio_tests():
    cases = [{"input": "2 3\n", "output": "5\n"}, {"input": "1 1\n", "output": "2"}, {"input": "-4 4", "output": "0"}]
    program = "a, b = map(int, input().split())\nprint(a + b if a > 0 else 1)\n"
    assert score("a, b = map(int, input().split())\nprint(a + b)\n", tests=cases, test_format="stdio") == 1.0
    assert score(program, tests=cases, test_format="stdio") == pytest.approx(2 / 3)
    flood = "a, b = map(int, input().split())\nprint('x' * (2 << 20))\nprint(a + b)\n"
    assert score(flood, tests=cases, test_format="stdio") == 0.0
    long_input = [{"input": "1 " * 100_000 + "\n", "output": "100000"}]  # 200 KB: more than a pipe holds
    assert score("print(len(input().split()))\n", tests=long_input, test_format="stdio") == 1.0
    crash = "a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(3)\n"
    assert score(crash, tests=cases, test_format="stdio") == 0.0


def test_rows_without_tests_are_unscorable_and_bad_tests_are_errors():
    r = reward()
    assert r(["p", "p"], [CORRECT, CORRECT], tests=[[], None]) == [None, None]
    with pytest.raises(SyntaxError, match="invalid syntax"):
        r(["p"], [CORRECT], tests=[["assert add(1, 1) =="]])
    with pytest.raises(ConfigError, match="tests_column='checks'"):
        CodeTestReward(tests_column="checks")(["p"], [CORRECT], tests=[TESTS])


def test_a_stuck_reward_is_bounded_by_the_scoring_timeout():
    """model.scoring.timeout shorter than the sandbox's: the worker's policy applies (timeout_score)."""
    slow = CodeTestReward(extract="whole", sandbox=Sandbox(timeout_seconds=30, cpu_seconds=30))
    with RewardRunner([slow], scoring=Scoring(timeout=3, timeout_score=0.0)) as runner:
        with pytest.warns(RewardWarning, match="longer than model.scoring.timeout"):
            scored = runner(["p"], ["import time\ntime.sleep(60)\n" + CORRECT], {"tests": [TESTS]})
    assert scored.per_reward["code_test_reward"].tolist() == [0.0] and scored.timeouts == {"code_test_reward": 1}
    time.sleep(0.5)  # the killed worker's sandbox dies with it (PR_SET_PDEATHSIG)
    assert _sandboxes_of_dead_parents() == []
    # What the killed worker left (its run's directory and cgroups) is swept by the next process's first run.
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = Path(tempfile.mkdtemp(prefix=f"stare-lit-sandbox-{gone.pid}-"))  # as a killed worker leaves one
    (stale / "sub").mkdir()
    left = [p for p in Path(tempfile.gettempdir()).glob("stare-lit-sandbox-*") if not _alive(p.name.split("-")[3])]
    assert stale in left
    sandbox_module._swept = False
    probe()
    assert not any(p.exists() for p in left)


def _alive(pid: str) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _sandboxes_of_dead_parents() -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"_sandbox_child.py") for a in args) and not os.path.exists(f"/proc/{int(args[-2])}"):
            found.append(b" ".join(args).decode())
    return found


def test_environment_is_scrubbed_but_allowed_variables_pass(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("STARE_LIT_ALLOWED", "yes")
    sandbox = Sandbox(**LIMITS, env_allow=["STARE_LIT_ALLOWED"])
    run = sandbox.run("import os\nprint(sorted(os.environ.items()))", "stdio")
    assert "STARE_LIT_ALLOWED', 'yes'" in run.stdout and SECRET not in run.stdout and "PATH" not in run.stdout


def test_no_process_cap_is_refused(monkeypatch):
    """As root without a pids cgroup nothing caps a fork bomb: the sandbox says so instead of running it."""
    from stare_lit.rewards.sandbox import Run

    uncapped = Run(records=[{"kind": "isolation", "process_cap": False}], exit_code=71, timed_out=False,
                   overflowed=False, stdout="", stderr="", tampered=False, seconds=0.0)
    monkeypatch.setattr(Sandbox, "_run", lambda self, workdir, nonce, stdin: uncapped)
    with pytest.raises(ConfigError, match=r"no writable pids cgroup.*sandbox\.require_process_cap: false"):
        score(CORRECT)
    assert Sandbox(require_process_cap=False).run(CORRECT, "asserts") is uncapped


def test_sandbox_checks_its_settings():
    with pytest.raises(ConfigError, match=r"sandbox\.cpu_seconds"):
        Sandbox(cpu_seconds=0)
    with pytest.raises(ConfigError, match=r"sandbox\.max_processes"):
        Sandbox(max_processes=1)
    with pytest.raises(ConfigError, match=r"test_format"):
        CodeTestReward(test_format="pytest")


# ---------------------------------------------------------------------- the built-in code task
def test_every_built_in_task_is_solved_by_its_solution():
    from stare_lit.data.tasks.code import TASKS

    rows = [json.loads(line) for line in TASKS.read_text().splitlines()]
    assert len(rows) >= 30 and all(row["prompt"] and row["tests"] for row in rows)
    r = CodeTestReward(extract="fenced", sandbox=Sandbox(**LIMITS))
    completions = [f"```python\n{row['solution']}```" for row in rows]
    assert r([row["prompt"] for row in rows], completions, tests=[row["tests"] for row in rows]) == [1.0] * len(rows)
    wrong = [f"```python\n{rows[(i + 1) % len(rows)]['solution']}```" for i in range(len(rows))]  # another task's
    assert r([row["prompt"] for row in rows], wrong, tests=[row["tests"] for row in rows]) == [0.0] * len(rows)


def test_code_config_trains_through_the_reward_worker(tmp_path, capsys):
    """configs/code_grpo.yaml for two steps: a config-built tiny model, every completion run in the
    sandbox in the reward worker (model.scoring.timeout is set); a random model scores ~0."""
    import csv

    from stare_lit.commands.cli import main
    from stare_lit.data.tasks.code import TOKENIZER

    main(["fit", "--config", str(ROOT / "configs" / "code_grpo.yaml"), "--model.policy.tokenizer", str(TOKENIZER),
          "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
          "--trainer.max_steps", "2", "--model.sampling.max_new_tokens", "24"])
    (metrics,) = tmp_path.glob("version_*/metrics.csv")
    rows = [row for row in csv.DictReader(metrics.open()) if row.get("reward/code_test_reward")]
    assert len(rows) == 2
    for row in rows:
        assert 0.0 <= float(row["reward/code_test_reward"]) <= 1.0
        assert float(row["reward/code_test_reward_timeouts"]) == 0 and float(row["reward/code_test_reward_errors"]) == 0
        assert float(row["reward/code_test_reward_none_frac"]) == 0
