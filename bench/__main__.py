"""``make bench`` = ``python -m bench``: every benchmark, one after the other, each in its own
process (moto and the simulator start fresh), and their figures in BENCHMARKS.md.

The issue's benchmarks (``bench_utilization`` ... ``bench_money``) write their own sections;
the others (``bench_simulator``, ``bench_limiter``, ``bench_tokens`` and any new
``bench_*.py``) are plain scripts whose output is put in a section of its own. Nothing here
gates on a figure: a benchmark that crashes is reported and the rest still run::

    python -m bench [--quick] [--repeat N] [--only NAME ...] [--skip NAME ...] [--no-write]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench._common import ROOT, Section, say

# Ours, in the order; they take --quick, --repeat and --write/--no-write.
OURS = (
    "bench_utilization",
    "bench_adaptive",
    "bench_priority",
    "bench_overhead",
    "bench_throughput",
    "bench_submit",
    "bench_faults",
    "bench_money",
    "bench_hot_items",
    "bench_batch_route",
)
# Plain scripts: their smaller arguments for --quick.
QUICK_ARGS = {
    "bench_simulator": ["--requests", "1000"],
    "bench_limiter": ["--jobs", "200"],
    "bench_resume": ["--jobs", "200"],
}
SCRIPT_TIMEOUT_S = 1800


def discovered() -> list[str]:
    found = sorted(p.stem for p in (ROOT / "bench").glob("bench_*.py"))
    others = [name for name in found if name not in OURS]
    return others + [name for name in OURS if name in found]


def run_ours(name: str, args: argparse.Namespace) -> int:
    command = [sys.executable, "-m", f"bench.{name}", "--repeat", str(args.repeat)]
    if args.quick:
        command.append("--quick")
    if args.write is not None:
        command.append("--write" if args.write else "--no-write")
    return subprocess.run(command, cwd=ROOT, timeout=SCRIPT_TIMEOUT_S, check=False).returncode


def run_script(name: str, args: argparse.Namespace) -> int:
    extra = QUICK_ARGS.get(name, []) if args.quick else []
    command = [sys.executable, f"bench/{name}.py", *extra]
    section = Section(name, f"Other benchmarks: `{name}`")
    started = time.monotonic()
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S, check=False
    )
    output = (done.stdout + (f"\n{done.stderr}" if done.returncode else "")).strip()
    section.add(
        f"`{' '.join(['.venv/bin/python', f'bench/{name}.py', *extra])}` printed "
        f"(in {time.monotonic() - started:.0f} s):\n\n```\n{output}\n```"
    )
    if args.write if args.write is not None else not args.quick:
        section.write()
    return done.returncode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes everywhere")
    p.add_argument("--repeat", type=int, default=2, help="runs per figure (default 2)")
    p.add_argument("--only", nargs="*", default=None, help="these benchmarks only")
    p.add_argument("--skip", nargs="*", default=[], help="not these")
    p.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write BENCHMARKS.md (default: yes, except with --quick)",
    )
    args = p.parse_args()
    wanted = [
        name
        for name in discovered()
        if (args.only is None or name in args.only or name.removeprefix("bench_") in args.only)
        and name not in args.skip
        and name.removeprefix("bench_") not in args.skip
    ]
    took: list[tuple[str, float, int]] = []
    for name in wanted:
        say(f"\n=== {name} ===")
        started = time.monotonic()
        try:
            code = run_ours(name, args) if name in OURS else run_script(name, args)
        except subprocess.TimeoutExpired:
            code = -1
        took.append((name, time.monotonic() - started, code))
    say("\n=== done ===")
    for name, seconds, code in took:
        say(f"{name:20} {seconds:7.0f} s  {'ok' if code == 0 else f'FAILED ({code})'}")
    say(f"{'total':20} {sum(s for _, s, _ in took):7.0f} s")
    if any(code for _, _, code in took):
        sys.exit(1)


if __name__ == "__main__":
    main()
