"""Shared pieces of the side-by-side benchmarks that time two commits of servegym.

`bench_core_change.py`, `bench_disagg_change.py` and `bench_sessions_change.py` check
each commit out into a temporary git worktree and time it in a fresh child process on
one core. The child is a code string run with `python -c`, so that it works against an
old commit's tree too (which may lack any helper module): `TREE_FINDER` is the prelude
that makes `import servegym` resolve to the tree given in the child's variable `tree`
(since 0.2 the installed, editable servegym maps its packages to the checkout it was
installed from, whatever PYTHONPATH says; this finder, first on the meta path, maps them
to `tree` from its pyproject.toml's package-dir); its `import_tree_script(name)` loads
the tree's `experiments/<name>.py` from its file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Needs `tree` (a pathlib.Path) defined before it; installs nothing until
# `install_tree_finder()` is called.
TREE_FINDER = r"""
import importlib.abc, importlib.machinery, importlib.util, tomllib
def install_tree_finder():
    dirs = tomllib.loads((tree / "pyproject.toml").read_text()).get("tool", {}).get(
        "setuptools", {}).get("package-dir", {})
    roots = {name: tree / path for name, path in dirs.items() if name}
    class TreeFinder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname in roots:
                return importlib.util.spec_from_file_location(
                    fullname, roots[fullname] / "__init__.py",
                    submodule_search_locations=[str(roots[fullname])])
            if path is not None and any(fullname.startswith(n + ".") for n in roots):
                return importlib.machinery.PathFinder.find_spec(fullname, path)
            return None
    sys.meta_path.insert(0, TreeFinder())
def import_tree_script(name):
    # an experiments/ module of `tree` (bench_sim, ...), loaded from its file rather than
    # by editing sys.path
    spec = importlib.util.spec_from_file_location(name, tree / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
"""


def run_child(code: str, args: Sequence[str], tree: Path, timeout: float = 600,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """The JSON object the child `code` prints last, run with `args` in `tree`, pinned to
    core 0 where `taskset` exists, one BLAS thread, a fixed hash seed."""
    environ = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", **(env or {}))
    taskset = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    done = subprocess.run([*taskset, sys.executable, "-c", code, *args], cwd=tree,
                          env=environ, capture_output=True, text=True, check=True,
                          timeout=timeout)
    return json.loads(done.stdout.strip().splitlines()[-1])


def worktree(commit: str, folder: Path) -> Path:
    """`commit` checked out (detached) at `folder`; remove it with `remove_worktree`."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(folder),
                    commit], check=True, capture_output=True)
    return folder


def remove_worktree(folder: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)],
                   capture_output=True)


def short(commit: str) -> str:
    """The abbreviated hash of `commit`."""
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", commit],
                          capture_output=True, text=True, check=True).stdout.strip()
