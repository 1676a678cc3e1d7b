"""The package as pip builds it: a wheel that holds every module of pipeline/, its subpackages included."""

import shutil
import sys
import zipfile

from .conftest import REPO, run_env, sh


def test_the_wheel_holds_every_module(tmp_path):
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ and egg-info in it
    shutil.copytree(REPO / "pipeline", source / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", source)
    wheels = tmp_path / "wheels"
    args = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)]
    sh(args, tmp_path, run_env())
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as built:
        held = set(built.namelist())
    modules = {str(p.relative_to(REPO)) for p in (REPO / "pipeline").rglob("*.py")}
    assert modules - held == set(), f"{wheel.name} lacks {sorted(modules - held)}"
    assert {"pipeline/stages/train.py", "pipeline/store/registry.py"} <= held
