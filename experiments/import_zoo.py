"""Import an rl-zoo3 run as a servegym agent folder, for `experiments/evaluate.py` and
`servegym.agents.load_agent`, without running code from the run folder.

    python experiments/import_zoo.py logs/ppo/servegym-Admission-v0_1
    python experiments/import_zoo.py logs/ppo_mask/servegym-Admission-v0_1 --model best \\
        --out agents_zoo/admission_ppo_mask
    python experiments/evaluate.py 'policies=[agent:agents_zoo/admission_ppo_mask,fcfs,spf]'

The zoo run folder (`python -m rl_zoo3.train ... -f logs` or `python -m servegym.zoo`) holds
`<env>.zip` (the final model; `best_model.zip` with the zoo's evaluation), `<env>/args.yml`
and `<env>/config.yml`. SB3's zip keeps cloudpickled entries in its `data` JSON and the zoo's
YAML files carry Python tags: neither is unpickled or executed here. What is read:

* `args.yml`: the algorithm, env id and env kwargs, through a YAML loader that knows the one
  Python tag the zoo writes (`collections.OrderedDict`, built as a plain dict) and refuses
  any other;
* from the zip, `policy.pth` (`torch.load(weights_only=True)`: tensors only) and the plain
  JSON fields of `data` (`num_timesteps`; `policy_kwargs` when it is plain data, else its
  readable `net_arch`; the optimizer entries do not act and are dropped);
* the observation and action spaces and `agent.json` come from the env built afresh with the
  run's id and kwargs (`servegym.agents.learners.agent_metadata`), checked against the
  shapes the zip records; the weights load strictly into the policy class the algorithm
  implies (ppo, a2c: ActorCriticPolicy; ppo_mask: MaskableActorCriticPolicy; dqn:
  DQNPolicy), so a mismatch fails here, not in the harness.

A run trained with the zoo's `normalize: true` keeps its statistics only in the pickled
`vecnormalize.pkl`: it is refused unless `--allow-pickle` (which unpickles that one file and
warns; for runs you made yourself). The output folder (default `<run>/servegym_agent_<model>`)
holds policy.pt, policy.json, agent.json (and obs_normalizer.json) as `save_agent` writes
them; it must not exist.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

# zoo algo -> (servegym agent.algo, policy class of agents/agent_files.policy_classes)
ZOO_ALGOS = {"ppo": ("ppo", "ActorCriticPolicy"), "a2c": ("a2c", "ActorCriticPolicy"),
             "ppo_mask": ("maskable_ppo", "MaskableActorCriticPolicy"),
             "dqn": ("dqn", "DQNPolicy")}
# policy_kwargs entries that change the network and are plain data
PLAIN_POLICY_KWARGS = {"net_arch", "ortho_init", "share_features_extractor",
                       "normalize_images", "log_std_init", "dueling"}
DROPPED_POLICY_KWARGS = {"optimizer_class", "optimizer_kwargs"}  # do not act
DEFAULT_ACTIVATION = {"ActorCriticPolicy": "Tanh", "MaskableActorCriticPolicy": "Tanh",
                      "DQNPolicy": "ReLU"}
ORDERED_DICT_TAG = "tag:yaml.org,2002:python/object/apply:collections.OrderedDict"


class ZooImportError(ValueError):
    """A zoo run folder that cannot be imported; the message says why and what to do."""


class _ZooLoader(yaml.SafeLoader):
    """SafeLoader plus the zoo's OrderedDict tag (a list of pairs, built as a dict)."""


def _ordered_dict(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    (pairs,) = loader.construct_sequence(node, deep=True)
    return {str(key): value for key, value in pairs}


_ZooLoader.add_constructor(ORDERED_DICT_TAG, _ordered_dict)


def read_zoo_yaml(path: Path) -> dict[str, Any]:
    """A zoo `args.yml` / `config.yml` as a dict (no Python object but OrderedDict)."""
    try:
        loaded = yaml.load(Path(path).read_text(), Loader=_ZooLoader)  # noqa: S506 (safe)
    except yaml.constructor.ConstructorError as error:
        raise ZooImportError(f"{path}: {error.problem} (only the zoo's OrderedDict tag is "
                             "read; nothing else is constructed)") from None
    if not isinstance(loaded, dict):
        raise ZooImportError(f"{path}: expected a mapping, got {type(loaded).__name__}")
    return loaded


def find_run(folder: Path, model: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(the zip, args.yml, config.yml) of a zoo run folder; `model` is final, best or a
    zip file name inside the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ZooImportError(f"{folder} is not a folder; pass a zoo run folder such as "
                             "logs/ppo/servegym-Admission-v0_1")
    args_files = sorted(folder.glob("*/args.yml"))
    if len(args_files) != 1:
        raise ZooImportError(f"{folder}: expected one <env>/args.yml (a zoo run folder), "
                             f"found {len(args_files)}")
    args = read_zoo_yaml(args_files[0])
    config_file = args_files[0].parent / "config.yml"
    config = read_zoo_yaml(config_file) if config_file.is_file() else {}
    env_id = str(args.get("env", ""))
    names = {"final": f"{env_id.replace('/', '-')}.zip", "best": "best_model.zip"}
    path = folder / names.get(model, model)
    if not path.is_file():
        found = sorted(p.name for p in folder.glob("*.zip"))
        raise ZooImportError(f"{path} not found; models in {folder}: {found or 'none'} "
                             "(--model final, best or one of these)")
    return path, args, config


def read_zip(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(`data` JSON, policy state_dict) of an SB3 zip, nothing unpickled."""
    import torch

    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        if not {"data", "policy.pth"} <= names:
            raise ZooImportError(f"{path}: not an SB3 model zip (no data / policy.pth)")
        data = json.loads(archive.read("data"))
        state = torch.load(io.BytesIO(archive.read("policy.pth")), map_location="cpu",
                           weights_only=True)
    return data, state


def policy_kwargs(data: Mapping[str, Any], class_name: str) -> dict[str, Any]:
    """The network-shaping `policy_kwargs` of the zip's data, as plain JSON."""
    raw = data.get("policy_kwargs") or {}
    serialized = isinstance(raw, dict) and ":serialized:" in raw
    items = {k: v for k, v in raw.items() if not k.startswith(":")} if serialized else raw
    kwargs: dict[str, Any] = {}
    for key, value in items.items():
        if key in DROPPED_POLICY_KWARGS:
            continue
        if key == "activation_fn":
            if f".{DEFAULT_ACTIVATION[class_name]}'" not in str(value):
                raise ZooImportError(f"policy_kwargs.activation_fn={value}: only the default "
                                     f"({DEFAULT_ACTIVATION[class_name]}) is imported")
            continue
        if key not in PLAIN_POLICY_KWARGS or isinstance(value, str) and serialized:
            raise ZooImportError(f"policy_kwargs.{key}={value!r} cannot be imported without "
                                 f"unpickling; importable keys: {sorted(PLAIN_POLICY_KWARGS)}")
        kwargs[key] = value
    return kwargs


def _check_space(name: str, saved: Mapping[str, Any], space: Any) -> None:
    shape = saved.get("_shape")
    if shape is not None and list(shape) != list(space.shape):
        raise ZooImportError(f"the model's {name} has shape {shape}, the env's "
                             f"{list(space.shape)}: it was trained with other env settings")
    if "n" in saved and int(saved["n"]) != int(getattr(space, "n", -1)):
        raise ZooImportError(f"the model's {name} has {saved['n']} actions, the env's "
                             f"{getattr(space, 'n', '?')}")


def _normalizer(folder: Path, allow_pickle: bool) -> dict[str, Any] | None:
    files = sorted(folder.glob("*/vecnormalize.pkl"))
    if not files:
        return None
    if not allow_pickle:
        raise ZooImportError(f"{files[0]} holds the observation statistics of a run trained "
                             "with normalize: true, and only as a pickle (which can run code "
                             "when loaded). Pass --allow-pickle if you made that run yourself, "
                             "or train with the shipped conf/zoo/*.yml (normalize: false)")
    import pickle

    warnings.warn(f"unpickling {files[0]} (--allow-pickle)", stacklevel=2)
    with open(files[0], "rb") as handle:
        venv = pickle.load(handle)  # noqa: S301 (the user's explicit opt-in)
    return {"mean": venv.obs_rms.mean.tolist(), "var": venv.obs_rms.var.tolist(),
            "epsilon": float(venv.epsilon), "clip_obs": float(venv.clip_obs),
            "norm_obs": bool(venv.norm_obs)}


def import_run(folder: Path, out: Path | None = None, model: str = "final",
               deterministic: bool = True, allow_pickle: bool = False) -> Path:
    """Write the agent folder of the zoo run `folder` (see the module docstring)."""
    import gymnasium as gym
    import torch

    import servegym  # noqa: F401  (registers the ids)
    from servegym.agents.agent_files import (
        NORMALIZER_FILE,
        POLICY_SPEC,
        POLICY_WEIGHTS,
        policy_classes,
        space_to_json,
    )
    from servegym.agents.learners import AGENT_FILE, agent_metadata
    from servegym.envs.core.metrics import atomic_write

    folder = Path(folder)
    path, args, config = find_run(folder, model)
    zoo_algo, env_id = str(args.get("algo")), str(args.get("env"))
    if zoo_algo not in ZOO_ALGOS:
        raise ZooImportError(f"algo {zoo_algo!r}: importable zoo algorithms are "
                             f"{sorted(ZOO_ALGOS)}")
    if not env_id.startswith("servegym/"):
        raise ZooImportError(f"env {env_id!r} is not a servegym env")
    algo, class_name = ZOO_ALGOS[zoo_algo]
    if config.get("normalize") and not list(folder.glob("*/vecnormalize.pkl")):
        raise ZooImportError(f"{folder}: trained with normalize but no vecnormalize.pkl")
    normalizer = _normalizer(folder, allow_pickle)
    data, state = read_zip(path)
    env_kwargs = dict(args.get("env_kwargs") or {})
    env = gym.make(env_id, **env_kwargs)
    try:
        for name, space in (("observation_space", env.observation_space),
                            ("action_space", env.action_space)):
            saved = data.get(name)
            if isinstance(saved, dict):
                _check_space(name, saved, space)
        kwargs = policy_kwargs(data, class_name)
        policy = policy_classes()[class_name](env.observation_space, env.action_space,
                                              lambda _: 0.0, **kwargs)
        try:
            policy.load_state_dict(state)  # strict: every tensor, every shape
        except RuntimeError as error:
            raise ZooImportError(f"{path}: the weights do not fit {class_name} with "
                                 f"{kwargs}: {error}") from None
        metadata = agent_metadata(algo, env, env_id, env_kwargs.get("policies") or {},
                                  deterministic)
    finally:
        env.close()
    command = sorted(folder.glob("*/command.txt"))
    info = {**metadata, "timesteps": int(data.get("num_timesteps", 0)),
            "source": "rl-zoo3", "zoo_algo": zoo_algo, "zoo_run": str(folder.resolve()),
            "zoo_model": path.name, "env_kwargs": env_kwargs,
            "zoo_command": command[0].read_text().strip() if command else None}
    spec = {"class": class_name, "observation_space": space_to_json(env.observation_space),
            "action_space": space_to_json(env.action_space), "policy_kwargs": kwargs}
    out = Path(out) if out is not None else folder / f"servegym_agent_{Path(model).stem}"
    if out.exists():
        raise ZooImportError(f"{out} exists; agent folders are never overwritten (--out)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        buffer = io.BytesIO()
        torch.save(policy.state_dict(), buffer)
        data_bytes = buffer.getvalue()
        atomic_write(tmp / POLICY_WEIGHTS, lambda h: h.buffer.write(data_bytes))
        atomic_write(tmp / POLICY_SPEC, lambda h: json.dump(spec, h, indent=2))
        if normalizer is not None:
            atomic_write(tmp / NORMALIZER_FILE, lambda h: json.dump(normalizer, h))
        atomic_write(tmp / AGENT_FILE, lambda h: json.dump(info, h, indent=2))
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="zoo run folder, e.g. "
                        "logs/ppo/servegym-Admission-v0_1")
    parser.add_argument("--model", default="final",
                        help="final (<env>.zip), best (best_model.zip) or a zip in the folder")
    parser.add_argument("--out", type=Path, help="agent folder to write (must not exist; "
                        "default <folder>/servegym_agent_<model>)")
    parser.add_argument("--stochastic", action="store_true",
                        help="evaluate by sampling (default: greedy among valid actions)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="unpickle vecnormalize.pkl of a normalize: true run you made")
    args = parser.parse_args(argv)
    try:
        out = import_run(args.folder, args.out, args.model, not args.stochastic,
                         args.allow_pickle)
    except ZooImportError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"agent folder: {out}\nevaluate it: python experiments/evaluate.py "
          f"'policies=[agent:{out},fcfs,spf]'", file=sys.stdout)


if __name__ == "__main__":
    main()
