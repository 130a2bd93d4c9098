"""Observations and masks of two commits, byte for byte: a check for encoder speed work.

    python experiments/obs_digest_compare.py --before ea20656          # vs the work tree
    python experiments/obs_digest_compare.py --before ea20656 --steps 500

For each case below (env id, explicit arguments, seed) a fresh child process per tree
(`commit_compare.run_child`, the tree first on the import path) steps the env with
uniformly random valid actions (drawn from the mask with a seeded generator, so both trees
take the same actions as long as their masks agree) and hashes, at every step, the
observation's bytes, the mask's bytes, the reward and the done flags into one SHA-256 per
case. Equal digests mean the encoder's output is identical over those trajectories. The
cases cover the default ADMIT keys, every other ADMIT and PREEMPT key, small and large K,
and the env ids whose decisions are ADMIT, PREEMPT, ROUTE, PLACE, MIGRATE and RETAIN.
Prints one line per case and exits 1 when any digest differs; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from commit_compare import TREE_FINDER, remove_worktree, run_child, worktree

ROOT = Path(__file__).resolve().parents[1]

CASES: tuple[tuple[str, dict, int], ...] = (
    ("servegym/Admission-v0", {"rate": 24.0, "episode_requests": 300, "num_slots": 16}, 0),
    ("servegym/Admission-v0", {"rate": 40.0, "episode_requests": 300, "num_slots": 16}, 1),
    ("servegym/Admission-v0", {"rate": 30.0, "episode_requests": 300, "num_slots": 7,
                               "admit_keys": ["shortest_remaining", "least_slack",
                                              "highest_priority", "most_prefix_hits",
                                              "oldest", "shortest_prefill_on_time"]}, 2),
    ("servegym/Admission-v0", {"rate": 30.0, "episode_requests": 300, "num_slots": 4,
                               "admit_keys": ["oldest"]}, 3),
    ("servegym/Admission-v0", {"rate": 30.0, "episode_requests": 300, "num_slots": 4,
                               "admit_keys": ["least_slack_on_time"]}, 4),
    ("servegym/Serving-v0", {"rate": 30.0, "episode_requests": 300, "num_slots": 16}, 5),
    ("servegym/Preemption-v0", {"episode_requests": 300}, 6),
    ("servegym/Preemption-v0", {"episode_requests": 300, "num_slots": 5,
                                "preempt_keys": ["lowest_priority", "least_progress",
                                                 "newest"]}, 7),
    ("servegym/Routing-v0", {"episode_requests": 300}, 8),
    ("servegym/Disaggregated-v0", {"episode_requests": 300}, 9),
    ("servegym/Migration-v0", {"episode_requests": 300}, 10),
    ("servegym/Sessions-v0", {}, 11),
)

CHILD = r"""
import hashlib, importlib, json, pathlib, sys
tree = pathlib.Path(sys.argv[1]); case = json.loads(sys.argv[2]); steps = int(sys.argv[3])
""" + TREE_FINDER + r"""
install_tree_finder()
import warnings
warnings.simplefilter("ignore")
import numpy as np, gymnasium as gym
importlib.import_module("servegym")
env_id, kwargs, seed = case
env = gym.make(env_id, **kwargs)
rng = np.random.default_rng(seed)
digest = hashlib.sha256()
obs, info = env.reset(seed=seed)
digest.update(obs.tobytes()); digest.update(info["action_mask"].tobytes())
for _ in range(steps):
    valid = np.flatnonzero(info["action_mask"])
    obs, reward, terminated, truncated, info = env.step(int(valid[rng.integers(valid.size)]))
    digest.update(obs.tobytes()); digest.update(info["action_mask"].tobytes())
    digest.update(repr((float(reward), terminated, truncated)).encode())
    if terminated or truncated:
        obs, info = env.reset()
        digest.update(obs.tobytes()); digest.update(info["action_mask"].tobytes())
source = importlib.import_module("servegym.envs.observations").__file__
if not pathlib.Path(source).resolve().is_relative_to(tree.resolve()):
    raise SystemExit(f"encoded with {source}, not the tree {tree}")
print(json.dumps({"digest": digest.hexdigest()}))
"""


def digest(tree: Path, case: tuple[str, dict, int], steps: int) -> str:
    try:
        return run_child(CHILD, [str(tree), json.dumps(case), str(steps)], tree)["digest"]
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"{case} in {tree} failed:\n{error.stderr}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="commit to compare against")
    parser.add_argument("--steps", type=int, default=3000, help="env steps per case")
    args = parser.parse_args()
    if args.steps < 1:
        raise SystemExit("--steps must be >= 1")
    differ = 0
    with tempfile.TemporaryDirectory() as scratch:
        old = worktree(args.before, Path(scratch) / "before")
        try:
            for case in CASES:
                a, b = digest(old, case, args.steps), digest(ROOT, case, args.steps)
                differ += a != b
                print(f"{'same' if a == b else 'DIFFERENT'} {a[:16]} {b[:16]} {case}",
                      flush=True)
        finally:
            remove_worktree(old)
    print(f"{len(CASES) - differ} of {len(CASES)} cases identical over {args.steps} steps")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
