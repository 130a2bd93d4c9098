"""Fixed priority weights of the interval mode beside the admission heuristics.

    python experiments/bench_weights.py        # writes results/interval_weights.md, .json

Each row holds one weight vector of `servegym.agents.heuristics.weighted.WeightedPriorityAdmission`
constant for a whole window (an `servegym.envs.interval_env.IntervalPolicy` whose weights never
change), on the held-out windows of servegym/AdmissionInterval-v0's train.py default
setting (`servegym.agents.training.final_episodes`: 5 windows of 1000 requests at 24 req/s), beside
SPF, the best admission heuristic there. It shows what the interval agent's action space
holds: the presets reproduce known rules, and some mixes beat all of them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from servegym.agents.heuristics.weighted import FEATURES, PRESETS
from servegym.envs.core.metrics import atomic_write

ROOT = Path(__file__).resolve().parents[1]

MIXES = {  # feature -> weight; the rest 0
    "SPF, already-late requests last": {"prefill": 0.5, "late": 1.0},
    "SPF + output/4, late last": {"prefill": 1.0, "output": 0.25, "late": 1.0},
    "prefill + output": {"prefill": 0.5, "output": 0.5},
    "SPF with ageing": {"prefill": 1.0, "waited": -0.5},
}


def vector(mix: dict[str, float]) -> tuple[float, ...]:
    return tuple(float(mix.get(name, 0.0)) for name in FEATURES)


def main() -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from servegym.agents import learners, training
    from servegym.agents.config import register_configs
    from servegym.agents.evaluation import compare, policy_means
    from servegym.envs.interval_env import IntervalPolicy

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["env=admission_interval", "agent=heuristic",
                                           "logger=none"])
    config = training.typed_config(OmegaConf.to_container(cfg, resolve=True))
    probe = learners.make_env(config.env.id, learners.env_kwargs(config), config.env.policies,
                              monitor=False)()
    setting = training.build_setting(config, probe)
    metadata = probe.unwrapped.agent_metadata()
    episodes = training.final_episodes(config, setting)

    def fixed(weights: tuple[float, ...]) -> Any:
        return lambda: training.with_controlled(
            {training.KINDS["admit"]: IntervalPolicy.from_metadata(lambda _: weights,
                                                                   metadata)},
            setting.controlled, config.env.policies)

    candidates = {"spf (heuristic)": training.heuristic_factory("spf", setting.controlled,
                                                                 config.env.policies)}
    candidates.update({f"preset {name}": fixed(w) for name, w in PRESETS.items()})
    candidates.update({name: fixed(vector(mix)) for name, mix in MIXES.items()})
    means = policy_means(compare(candidates, episodes, setting.cost, setting.kwargs["cluster"]))
    spf = means["spf (heuristic)"]["serving/goodput_rps"]
    lines = ["| weights | goodput (req/s) | SLO attainment | vs SPF |", "|---|---|---|---|"]
    for name, row in means.items():
        lines.append(f"| {name} | {row['serving/goodput_rps']:.2f} | "
                     f"{row['serving/slo_attainment']:.3f} | "
                     f"{row['serving/goodput_rps'] / spf - 1:+.1%} |")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    command = "python experiments/bench_weights.py"
    text = (f"# Fixed interval-mode weights vs SPF ({stamp})\n\nCommand: `{command}`\n\n"
            f"{__doc__.split(chr(10), 3)[3].strip()}\n\nMean over {len(episodes)} held-out "
            f"windows (seed {config.seed}).\n\n" + "\n".join(lines) + "\n")
    out = ROOT / "results"
    atomic_write(out / "history" / f"interval_weights_{stamp}.md", lambda h: h.write(text))
    atomic_write(out / "interval_weights.md", lambda h: h.write(text), overwrite=True)
    atomic_write(out / "interval_weights.json", lambda h: json.dump(
        {"created": stamp, "command": command, "policies": means}, h, indent=2,
        default=float), overwrite=True)
    print(text)


if __name__ == "__main__":
    main()
