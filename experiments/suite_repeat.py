"""The full test suite, N times in a row, with CPU-bound processes running beside it.

    python experiments/suite_repeat.py                    # 10 runs, one busy process
    python experiments/suite_repeat.py --runs 3 --hogs 2 --name suite_repeat_short

A flaky test shows up as a run that fails where the others pass; a test that depends on
timing shows up under load. Each run is `python -m pytest -q -p no:cacheprovider` in the
project root (the README's test command, without its set-up), in a fresh process, with a
wall-clock limit per run (`--timeout`, so no run can hang the loop). `--hogs` processes
spin a float loop for the whole time (each keeps one core busy; 0: none). The loop stops
at the first failing run (`--keep-going`: runs them all) and kills the busy processes on
any exit.

Writes `results/<name>.md` and `.json` (never overwritten: `--name`): per run its exit
status, the pytest summary line, wall seconds and the 1-minute load average before and
after; and how many runs passed in a row from the first. They are rewritten after every
run, so a loop stopped early keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from servegym.envs.core.metrics import atomic_write, result_paths

ROOT = Path(__file__).resolve().parents[1]
HOG = "x = 1.0\nwhile True:\n    x = x * 1.0000001 + 1e-9\n"
SUMMARY = re.compile(r"^=*\s*(\d+ (passed|failed).*?)\s*=*$")


def summary_line(output: str) -> str:
    """pytest's last summary line ("1228 passed, 4 skipped in 640.1s"), or the last line."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        match = SUMMARY.match(line.strip())
        if match:
            return match.group(1)
    return lines[-1] if lines else ""


def run_suite(timeout: float, pytest_args: list[str]) -> dict[str, object]:
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               *pytest_args], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)
        status, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        status = "timeout"
        output = (expired.stdout or b"").decode(errors="replace") \
            if isinstance(expired.stdout, bytes) else (expired.stdout or "")
    return {"status": status, "summary": summary_line(output),
            "wall_s": time.perf_counter() - started, "load_before": load_before,
            "load_after": os.getloadavg()[0],
            "failures": [line for line in output.splitlines() if line.startswith("FAILED")]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--hogs", type=int, default=1, help="CPU-bound processes beside it")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument("--keep-going", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--name", default="suite_repeat")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments")
    args = parser.parse_args()
    if args.runs < 1 or args.hogs < 0 or not args.timeout > 0:
        raise SystemExit("--runs must be >= 1, --hogs >= 0 and --timeout > 0")
    paths, existing = result_paths(args.out, args.name)
    if existing:
        raise SystemExit(f"{', '.join(existing)} exist; results are never overwritten (--name)")
    # the commit the loop starts at (the runs test the work tree as it is then)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(args.hogs)]
    runs: list[dict[str, object]] = []
    try:
        for number in range(1, args.runs + 1):
            runs.append(run_suite(args.timeout, args.pytest_args))
            row = runs[-1]
            print(f"run {number}/{args.runs}: status {row['status']}, {row['summary']}, "
                  f"{row['wall_s']:.0f} s", flush=True)
            text = write_results(args, runs, paths, first=number == 1, head=head)
            if row["status"] != 0 and not args.keep_going:
                break
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    print(text)


def write_results(args: argparse.Namespace, runs: list[dict[str, object]],
                  paths: list[Path], first: bool, head: str) -> str:
    """The table and JSON of the runs so far (after every run, so a stopped loop keeps
    what it measured; only this loop's own files are replaced)."""
    in_a_row = next((i for i, r in enumerate(runs) if r["status"] != 0), len(runs))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    command = "python experiments/suite_repeat.py " + " ".join(sys.argv[1:])
    lines = [f"# Test suite, {args.runs} runs in a row beside {args.hogs} CPU-bound "
             f"process(es) ({stamp})", "", f"Command: `{command.strip()}`, started at `{head}`, "
             f"{os.cpu_count()} cores.", "",
             f"**{in_a_row} of {len(runs)} runs passed in a row** (asked: {args.runs}).", "",
             "| run | status | pytest summary | wall s | load 1 min before -> after |",
             "|---|---|---|---|---|"]
    for number, r in enumerate(runs, 1):
        lines.append(f"| {number} | {r['status']} | {r['summary']} | {r['wall_s']:.0f} | "
                     f"{r['load_before']:.2f} -> {r['load_after']:.2f} |")
    failures = [f for r in runs for f in r["failures"]]
    if failures:
        lines += ["", "Failures:", "", *[f"- `{f}`" for f in failures]]
    text = "\n".join(lines) + "\n"
    payload = {"created": stamp, "commit": head, "command": command, "hogs": args.hogs,
               "asked": args.runs, "passed_in_a_row": in_a_row, "runs": runs}
    atomic_write(paths[0], lambda h: h.write(text), overwrite=not first)
    atomic_write(paths[1], lambda h: json.dump(payload, h, indent=2), overwrite=not first)
    return text


if __name__ == "__main__":
    main()
