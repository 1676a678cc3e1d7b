from pathlib import Path

import pytest
import yaml

from pipeline.params import ParamsError, load_params

from .conftest import REPO


def write(tmp_path: Path, mutate) -> Path:
    tree = yaml.safe_load((REPO / "params.yaml").read_text())
    mutate(tree)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_defaults_are_the_tutorial():
    p = load_params(REPO / "params.yaml")
    assert (p.train.seed, p.train.lr, p.train.epochs, p.train.device) == (1, 1.0, 1000, "cpu")
    assert p.prepare.source == "data/raw/tutorial.csv" and p.prepare.test_size == 0.0


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t["train"].update(momentum=0.9), "unknown key train.momentum"),
        (lambda t: t["train"].pop("lr"), "missing key train.lr"),
        (lambda t: t["train"].update(lr="fast"), "train.lr: expected float, got str"),
        (lambda t: t["train"].update(epochs=10.5), "train.epochs: expected int, got float"),
        (lambda t: t["prepare"].update(standardize="yes"), "prepare.standardize: expected bool"),
        (lambda t: t["evaluate"]["baseline"].update(C="x"), "evaluate.baseline.C: expected float"),
        (lambda t: t.pop("register"), "missing key register"),
        (lambda t: t.update(extra={}), "unknown key extra"),
        (lambda t: t["prepare"].update(test_size=1.5), "prepare.test_size: must be in [0, 1)"),
        (lambda t: t["train"].update(device="tpu"), "train.device: must be one of"),
        (lambda t: t["register"].update(metric="mse"), "register.metric: must be one of"),
        (lambda t: t["prepare"].update(missing="skip"), "prepare.missing: must be one of error, drop, got 'skip'"),
        (lambda t: t["prepare"].update(positive=True), "prepare.positive: expected text, got the boolean True: quote"),
        (lambda t: t["prepare"].update(positive=2), "prepare.positive: expected str or null, got int 2"),
        (lambda t: t["cluster"].update(engine="spark"), "cluster.engine: must be one of local, ray, got 'spark'"),
        (lambda t: t["cluster"].update(workers=0), "cluster.workers: must be >= 1 or null, got 0"),
    ],
)
def test_bad_params_name_the_key(tmp_path, mutate, message):
    path = write(tmp_path, mutate)
    with pytest.raises(ParamsError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_params(path)


def test_overrides_are_typed():
    p = load_params(REPO / "params.yaml", ["train.lr=0.5", "train.epochs=10", "evaluate.baseline.C=2"])
    assert (p.train.lr, p.train.epochs, p.evaluate.baseline.C) == (0.5, 10, 2.0)
    for bad, message in [
        ("train.lr=abc", "train.lr: expected float"),
        ("train.nope=1", "unknown key train.nope"),
        ("nope.x=1", "unknown section nope"),
        ("train.lr", "expected section.key=value"),
    ]:
        with pytest.raises(ParamsError, match=message):
            load_params(REPO / "params.yaml", [bad])


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "absent.yaml")
    (tmp_path / "broken.yaml").write_text("train:\n  lr: [1.0\n")
    with pytest.raises(ParamsError, match="broken.yaml: not valid YAML"):
        load_params(tmp_path / "broken.yaml")
    assert load_params(REPO / "params.yaml", ['prepare.positive="yes"']).prepare.positive == "yes"


def test_section_flattens_for_mlflow():
    p = load_params(REPO / "params.yaml")
    assert p.section("evaluate") == {
        "evaluate.baseline.C": 1.0,
        "evaluate.baseline.max_iter": 1000,
        "evaluate.baseline.solver": "lbfgs",
    }
