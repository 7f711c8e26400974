"""Shared pieces of the benchmarks: the tiny policy, the machine/version header, tables, memory.

Every benchmark measures alternately (A B B A ...) in one run, reports medians, and runs a
variant in a fresh subprocess when it reports peak memory: on CPU the only honest peak is the
process's own ``ru_maxrss``, which never goes down, so one variant per process.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


# ---------------------------------------------------------------- the machine and the versions
def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:  # noqa: BLE001 - lscpu missing: keep the platform string
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {mem_gib:.0f} GiB RAM, {platform.system()} {platform.machine()}"


def versions(*extra: str) -> str:
    names = ["torch", "lightning", "transformers", *extra]
    parts = [f"Python {platform.python_version()}"]
    for name in names:
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


def load() -> str:
    """The machine's load average (1, 5, 15 min): other people's jobs share these cores."""
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def header(title: str, *extra_packages: str) -> str:
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (f"### {title}\n\n- machine: {machine()}\n- versions: {versions(*extra_packages)}\n"
            f"- date: {now}; load average (1/5/15 min) when the table was written: {load()}\n"
            f"- command: `python {' '.join(sys.argv)}`\n")


# ---------------------------------------------------------------- statistics and tables
def median(xs) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def spread(xs) -> str:
    """'median (min–max)' of a list of numbers, 3 significant digits."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    return f"{fmt(median(xs))} ({fmt(min(xs))}–{fmt(max(xs))})"


def fmt(x: float) -> str:
    if x != x:  # NaN
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 0.1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(name: str, markdown: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(markdown)
    return path


# ---------------------------------------------------------------- memory (Linux)
def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ---------------------------------------------------------------- fresh-process workers
def run_worker(script: Path, args: list[str], timeout: float = 900) -> dict:
    """Run ``python script --worker ... args`` and parse the JSON its last stdout line holds."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise RuntimeError(f"worker {script.name} {' '.join(args)} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def emit(result: dict) -> None:
    """A worker's answer: one JSON line, last on stdout."""
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- the tiny policy
def tiny_llama_config(vocab_size: int = 16, hidden_size: int = 128, num_layers: int = 3, num_heads: int = 4,
                      max_positions: int = 128):
    """The architecture ``stare-lit warmstart`` trains (0.6M parameters at vocab 16), random weights."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                       num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
                       max_position_embeddings=max_positions, pad_token_id=0, eos_token_id=1, bos_token_id=1,
                       tie_word_embeddings=True)


def char_tokenizer_with_vocab(vocab_size: int):
    """The task's character tokenizer, its vocabulary padded with never-typed filler tokens
    ``<x16>`` ... to ``vocab_size`` entries, so a random-weight model with a real-sized vocabulary
    (32k, 150k) can sample and decode every id. The prompts still encode to the same 16 symbols."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from stare_lit.data.tasks.arithmetic import EOS, PAD, SYMBOLS, UNK

    vocab = {PAD: 0, EOS: 1, UNK: 2} | {c: 3 + i for i, c in enumerate(SYMBOLS)}
    vocab |= {f"<x{i}>": i for i in range(len(vocab), vocab_size)}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   padding_side="left")


def save_tiny_policy(path: Path, seed: int = 0, vocab_size: int = 16, **config) -> Path:
    """Write a randomly initialised tiny policy + the character tokenizer to ``path`` (no download).

    ``vocab_size`` > 16 pads the tokenizer (``char_tokenizer_with_vocab``) and the model's
    embedding / LM head to that size: the LM head and the log-softmax then cost what they cost in
    a real model, while the transformer body stays tiny.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from stare_lit.data.tasks.arithmetic import char_tokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(vocab_size=vocab_size, **config))
    model.generation_config.pad_token_id = 0
    model.save_pretrained(path)
    (char_tokenizer() if vocab_size == 16 else char_tokenizer_with_vocab(vocab_size)).save_pretrained(path)
    return path


# ---------------------------------------------------------------- step-by-step alternation
class Baton:
    """A worker's side of step-level alternation: before each step, say "ready" and wait for "go".

    The driver (``alternate``) lets one worker at a time run a step, so two frameworks in two
    processes are measured S T T S S T ... on a machine whose load changes minute to minute.
    Without ``--ready-fd`` (run by hand) it does nothing.
    """

    def __init__(self, ready_fd: int | None) -> None:
        self.out = os.fdopen(ready_fd, "w", buffering=1) if ready_fd is not None else None

    def wait(self) -> None:
        if self.out is not None:
            self.out.write("ready\n")
            self.out.flush()
            if sys.stdin.readline().strip() != "go":
                raise SystemExit("driver went away")


def alternate(script: Path, workers: dict[str, list[str]], order_seed: int = 0, timeout: float = 1200) -> dict:
    """Start every worker (``python script ARGS --ready-fd N``), wait until all are at their first
    step, then hand out one step at a time in the order A B B A A B ... (a worker that has finished
    drops out). Returns each worker's JSON answer."""
    import tempfile

    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    procs, ready, logs = {}, {}, {}
    for name, args in workers.items():
        r, w = os.pipe()
        logs[name] = (tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+"))
        procs[name] = subprocess.Popen([sys.executable, str(script), *args, "--ready-fd", str(w)], cwd=ROOT, env=env,
                                       stdin=subprocess.PIPE, stdout=logs[name][0], stderr=logs[name][1], text=True,
                                       pass_fds=(w,))
        os.close(w)
        ready[name] = os.fdopen(r)

    def wait_ready(name: str) -> bool:
        line = ready[name].readline()  # "" once the worker has exited
        return line.strip() == "ready"

    alive = [name for name in workers if wait_ready(name)]
    names = list(workers)
    turn = order_seed
    try:
        while alive:
            pair = names if turn % 2 == 0 else names[::-1]
            turn += 1
            for name in pair:
                if name not in alive:
                    continue
                procs[name].stdin.write("go\n")
                procs[name].stdin.flush()
                if not wait_ready(name):
                    procs[name].wait(timeout=timeout)  # its teardown happens before anyone else runs
                    alive.remove(name)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.stdin.close()
                p.wait(timeout=timeout)
    out = {}
    for name, p in procs.items():
        stdout, stderr = logs[name]
        stdout.seek(0)
        stderr.seek(0)
        text = stdout.read()
        if p.returncode != 0:
            sys.stderr.write(text[-4000:] + stderr.read()[-4000:])
            raise RuntimeError(f"worker {name} failed with exit code {p.returncode}")
        out[name] = json.loads(text.strip().splitlines()[-1])
    return out
