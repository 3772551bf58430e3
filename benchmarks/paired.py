"""CPU per message of two pyloto source trees, measured side by side at the same moment.

    .venv/bin/python -m benchmarks.paired --a TREE_A --b TREE_B [--pairs 3] [-n 1000] [--rate 50]

Single runs of the same code on one machine drift by several percent within minutes, which
hides any change worth a few percent. Here each pair runs both trees' own `pyloto bench` at
once, each at half the usual rate so that the two together offer the usual load, with LLM
calls of exactly the configured latency. Both runs of a pair see the same drift, so the ratio
B/A of their CPU per message moves much less between pairs than the figures themselves. The
pairs alternate which tree starts first. A tree is a checkout (`git worktree add /tmp/b
HEAD~1`); each runs with its own `.venv/bin/python` when it has one (else this interpreter),
its own directory first on PYTHONPATH and no bytecode written. Both run with
PYLOTO_SEND_RATE_PER_NUMBER=1000, no reply cache and no coalescing unless the environment says
otherwise. Nothing is pinned: `pyloto bench` runs the server beside its load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Pair:
    """One pair's CPU ms per message of each tree, and what each lost or doubled."""

    a_ms: float
    b_ms: float
    faults: int

    @property
    def ratio(self) -> float:
        return self.b_ms / self.a_ms


# what both trees run with unless the environment says otherwise (as benchmarks.compare does)
PYLOTO_DEFAULTS = {
    "PYLOTO_SEND_RATE_PER_NUMBER": "1000",
    "PYLOTO_REPLY_CACHE": "false",
    "PYLOTO_COALESCE_WINDOW_SECONDS": "0",
}


def bench_command(messages: int, rate: float) -> list[str]:
    """The bench each tree runs (after its interpreter): pyloto alone, LLM latency exact, one
    JSON object last."""
    return [
        *("-m", "pyloto_cli", "bench", "--json"),
        *("-n", str(messages), "--rate", str(rate), "--llm-jitter-ms", "0"),
    ]


def interpreter(tree: Path) -> str:
    """The tree's own venv's python, else this one."""
    venv = tree / ".venv" / "bin" / "python"
    return str(venv) if venv.is_file() else sys.executable


def figures(output: str) -> tuple[float, int]:
    """CPU ms per message, and messages lost or doubled, from one bench's JSON (its last
    line)."""
    run: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    counts = run["counts"]
    return float(run["server"]["cpu_ms_per_msg"]), int(counts["lost"] + counts["duplicated"])


async def _one(tree: Path, command: list[str], delay_s: float) -> tuple[float, int]:
    await asyncio.sleep(delay_s)
    env = {
        **PYLOTO_DEFAULTS,
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    with tempfile.TemporaryDirectory(prefix="pyloto-paired-") as cwd:  # no tree's .env is read
        proc = await asyncio.create_subprocess_exec(
            interpreter(tree),
            *command,
            cwd=cwd,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the bench in {tree} exited with {proc.returncode}")
    return figures(out.decode())


async def run_pair(a: Path, b: Path, command: list[str], b_first: bool) -> Pair:
    """Both trees' benches at once; the one that starts second starts 0.3 s later."""
    (a_ms, a_bad), (b_ms, b_bad) = await asyncio.gather(
        _one(a, command, 0.3 if b_first else 0.0), _one(b, command, 0.0 if b_first else 0.3)
    )
    return Pair(a_ms, b_ms, a_bad + b_bad)


def summary(pairs: list[Pair]) -> str:
    """The median ratio B/A and its range over the pairs."""
    ratios = [p.ratio for p in pairs]
    low, high = min(ratios), max(ratios)
    return f"B/A median {statistics.median(ratios):.3f} (pairs {low:.3f} to {high:.3f})"


def main(argv: list[str] | None = None) -> None:
    """Run the pairs and print each, then the median ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--a", type=Path, required=True, help="the reference tree")
    parser.add_argument("--b", type=Path, required=True, help="the tree compared with it")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("-n", "--messages", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0, help="per tree (default 50/s)")
    args = parser.parse_args(argv)
    command = bench_command(args.messages, args.rate)
    pairs: list[Pair] = []
    for index in range(args.pairs):
        pair = asyncio.run(run_pair(args.a.resolve(), args.b.resolve(), command, index % 2 == 1))
        pairs.append(pair)
        print(
            f"pair {index + 1}: A {pair.a_ms:.2f}  B {pair.b_ms:.2f} ms/msg  B/A {pair.ratio:.3f}"
            f"  lost+doubled {pair.faults}",
            flush=True,
        )
    print(summary(pairs))


if __name__ == "__main__":
    main()
