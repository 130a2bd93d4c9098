"""How often each heuristic's pick is visible to an agent: candidate sets vs queue order.

    python experiments/bench_visibility.py            # writes results/visibility.md, .json

A request the agent cannot see is a request it cannot choose. Each heuristic of a
decision kind runs inline on the evaluation windows of the train.py default setting of
its task (ADMIT: servegym/Admission-v0; PREEMPT: servegym/Preemption-v0; held-out split,
5 windows, `servegym.agents.training.final_episodes`); at every decision it answers, the decision is
also encoded by two observation encoders and we count whether the heuristic's choice is
among the encoder's slots:

* `candidate sets`: the env's default (`env.num_slots` slots, round-robin over
  `env.admit_keys` / `env.preempt_keys`, envs/observations.py);
* `queue order, K=8`: the first 8 fitting requests in queue order (ADMIT) or the 8 most
  recently admitted (PREEMPT): layout 1's slots, `admit_keys=("oldest",)`.

STOP answers are not counted (nothing to see). "long queue" counts the decisions with more
candidates than slots, where the choice of slots matters. The encoders estimate output
lengths with the truth (the env's default `length_knowledge=oracle`), so a heuristic ranking
by noisy predictions (`*-pred`) or by a rule no key encodes can pick a request that no
slot holds (`edf-late-last` was one, at 70.5%, until the "on time" keys).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from servegym.envs.core.decisions import STOP, Action, DecisionKind
from servegym.envs.core.metrics import atomic_write
from servegym.envs.observations import ObservationEncoder

ROOT = Path(__file__).resolve().parents[1]

TASKS = {DecisionKind.ADMIT: "admission", DecisionKind.PREEMPT: "preemption"}
LEGACY_SLOTS = 8


class VisibilityProbe:
    """Answers with `inner` and records whether its choice is among each encoder's slots."""

    def __init__(self, inner: Any, encoders: dict[str, ObservationEncoder]) -> None:
        self.inner = inner
        self.encoders = encoders
        self.counts = {name: [0, 0, 0, 0] for name in encoders}  # seen, visible, long, vis.

    def reset(self, rng: Any = None) -> None:
        if hasattr(self.inner, "reset"):
            self.inner.reset(rng)

    def decide(self, decision: Any) -> Any:
        action = self.inner.decide(decision)
        choice = action.choice if isinstance(action, Action) else int(action)
        if choice == STOP:
            return action
        sim = decision.instance.sim
        for name, encoder in self.encoders.items():
            encoder.encode(decision, sim)
            visible = choice in encoder.slot_choice
            long = len(decision.candidates) > encoder.num_slots
            counts = self.counts[name]
            counts[0] += 1
            counts[1] += visible
            counts[2] += long
            counts[3] += visible and long
        return action


def setting(task: str) -> tuple[Any, Any, list[Any]]:
    """(config, setting, episodes) of a task's train.py defaults (Hydra compose)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from servegym.agents import learners, training
    from servegym.agents.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"env={task}", "logger=none", "agent=heuristic"])
    config = training.typed_config(OmegaConf.to_container(cfg, resolve=True))
    probe = learners.make_env(config.env.id, learners.env_kwargs(config), config.env.policies,
                              monitor=False)()
    built = training.build_setting(config, probe)
    return config, built, training.final_episodes(config, built)


def encoders(config: Any, kind: DecisionKind, estimate: Any) -> dict[str, ObservationEncoder]:
    env = config.env
    legacy = {"admit_keys": ("oldest",)} if kind == DecisionKind.ADMIT else \
        {"preempt_keys": ("newest",)}
    return {
        "candidate sets": ObservationEncoder(env.num_slots, 2.0, 10.0, estimate,
                                             admit_keys=env.admit_keys,
                                             preempt_keys=env.preempt_keys),
        f"queue order, K={LEGACY_SLOTS}": ObservationEncoder(LEGACY_SLOTS, 2.0, 10.0, estimate,
                                                             **legacy),
    }


def measure(kind: DecisionKind) -> list[dict[str, Any]]:
    from servegym.agents.evaluation import run_episode
    from servegym.agents.heuristics import make_policy, policy_names
    from servegym.agents.training import with_controlled

    config, built, episodes = setting(TASKS[kind])
    rows = []
    for name in policy_names(kind):
        totals: dict[str, list[int]] = {}
        for episode in episodes:
            outputs = episode.workload.output_len
            probe = VisibilityProbe(make_policy(name),
                                    encoders(config, kind, lambda r, o=outputs: float(o[r.rid])))
            policies = with_controlled({kind: probe}, built.controlled, config.env.policies)
            run_episode(policies, episode, built.cost, built.kwargs["cluster"])
            for label, counts in probe.counts.items():
                totals.setdefault(label, [0, 0, 0, 0])
                totals[label] = [a + b for a, b in zip(totals[label], counts, strict=True)]
        for label, (seen, visible, long, long_visible) in totals.items():
            rows.append({"task": config.env.id, "kind": kind.name, "heuristic": name,
                         "slots": label, "decisions": seen,
                         "visible": visible / seen if seen else float("nan"),
                         "long_queue_decisions": long,
                         "visible_when_long": long_visible / long if long else float("nan")})
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| task | heuristic | slots | decisions | pick visible | decisions with more "
             "candidates than slots | pick visible there |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['heuristic']} | {r['slots']} | {r['decisions']:,} | "
                     f"{r['visible']:.1%} | {r['long_queue_decisions']:,} | "
                     f"{r['visible_when_long']:.1%} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    rows = measure(DecisionKind.ADMIT) + measure(DecisionKind.PREEMPT)
    text = table(rows)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    command = "python experiments/bench_visibility.py"
    doc = (f"# Is each heuristic's pick visible to the agent? ({stamp})\n\nCommand: `{command}`"
           f"\n\n{__doc__.split(chr(10), 3)[3].strip()}\n\n{text}\n")
    atomic_write(args.out / "history" / f"visibility_{stamp}.md", lambda h: h.write(doc))
    atomic_write(args.out / "visibility.md", lambda h: h.write(doc), overwrite=True)
    atomic_write(args.out / "visibility.json", lambda h: json.dump(
        {"created": stamp, "command": command, "rows": rows}, h, indent=2), overwrite=True)
    print(doc)


if __name__ == "__main__":
    main()
