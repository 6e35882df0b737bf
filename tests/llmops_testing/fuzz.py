"""Mutated run specs for the fuzz test, and the child process that feeds them to the real CLI.

``python -m llmops_testing.fuzz SEED COUNT WORKDIR`` writes COUNT specs made from the examples by seeded
mutations (hostile values, wrong types, unknown and missing keys, broken YAML, aliases, tags, binary
bytes) and runs `llmops validate` (and `llmops render` for every fourth) on each in this one process,
under a memory limit and a per-case alarm. It prints one JSON line per case: the exit code, or the
traceback it ended in. The test (tests/spec/test_fuzz.py) asserts every code is 0 or 2.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import random
import resource
import signal
import sys
import traceback
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
HOSTILE = [
    10**40, -(10**12), 0, -1, 2**63, 1e308, float("inf"), float("nan"), "", " ", "x" * 100_000,
    "a\nb", "a\x00b", "a\rb", "$(touch PWNED)", "`id`", "; rm -rf /", "../../etc/passwd", "/dev/zero",
    "\u202e\u0000\ud7ff", "-o", "--help", True, False, None, [], {}, [1, [2, [3]]], {"a": {"b": {"c": 1}}},
    "\ud800" * 3, "é" * 50, "1e999", "0x10", "null", "~",
]
TEXT_ATTACKS = [
    lambda t: t[: len(t) // 2],
    lambda t: t.replace(":", "", 1),
    lambda t: "a: &a [*a]\n" + t,
    lambda t: "x: !!python/object/apply:os.system [id]\n" + t,
    lambda t: "x: !!binary AAAA\n" + t,
    lambda t: t + "\n" + t,
    lambda t: "[" * 5000 + "]" * 5000,
    lambda t: "\t" + t,
    lambda t: t.replace("\n", "\r\n"),
    lambda t: t + "\nz: !!int nope\n",
]


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))
    yield path


def _set(obj, path, value):
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


def _delete(obj, path):
    for p in path[:-1]:
        obj = obj[p]
    del obj[path[-1]]


def mutate(spec: dict, rng: random.Random) -> dict | str | bytes:
    """One mutation of a spec: a dict to dump as YAML, or raw text/bytes to write as they are."""
    spec = copy.deepcopy(spec)
    kind = rng.random()
    paths = [p for p in _leaves(spec) if p]
    if kind < 0.55:
        for _ in range(rng.randint(1, 3)):
            _set(spec, rng.choice(paths), rng.choice(HOSTILE))
            paths = [p for p in _leaves(spec) if p]
        return spec
    if kind < 0.7:
        _delete(spec, rng.choice(paths))
        return spec
    if kind < 0.8:
        parent = rng.choice([p for p in paths if isinstance(_get(spec, p), dict)] or [()])
        _get(spec, parent)[rng.choice(["nmae", "extra", "gpus", "steps ", "1"])] = rng.choice(HOSTILE)
        return spec
    text = yaml.safe_dump(spec)
    if kind < 0.95:
        return rng.choice(TEXT_ATTACKS)(text)
    data = bytearray(text.encode())
    for _ in range(rng.randint(1, 20)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def _get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def _examples() -> list[dict]:
    return [yaml.safe_load(p.read_text()) for p in sorted((REPO / "examples").glob("*.yaml"))] + [
        yaml.safe_load((REPO / "cluster" / "slurm" / "tiny-cpu-2node.yaml").read_text())]


def _run_cli(args: list[str]) -> int:
    from llmops.cli import main

    sys.argv = ["llmops", *args]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def _alarm(signum, frame):
    raise TimeoutError("a case ran past its time limit")


def main(seed: int, count: int, workdir: Path) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    signal.signal(signal.SIGALRM, _alarm)
    rng = random.Random(seed)
    examples = _examples()
    for i in range(count):
        case = mutate(rng.choice(examples), rng)
        path = workdir / f"case-{i}.yaml"
        if isinstance(case, dict):
            path.write_text(yaml.safe_dump(case, allow_unicode=True))
        else:
            path.write_bytes(case if isinstance(case, bytes) else case.encode("utf-8", "surrogatepass"))
        commands = [["validate", str(path)]]
        if i % 4 == 0:
            commands.append(["render", str(path), "--out", str(workdir / f"out-{i}")])
        for args in commands:
            signal.alarm(20)
            try:
                result = {"case": i, "args": args[0], "code": _run_cli(args)}
            except BaseException:  # noqa: BLE001 (the finding: anything but an exit code)
                result = {"case": i, "args": args[0], "traceback": traceback.format_exc()[-2000:]}
            finally:
                signal.alarm(0)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
