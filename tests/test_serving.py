"""The registered model served by a real `mlflow models serve` process, over real HTTP, and batch scoring."""

from __future__ import annotations

import csv
import http.client
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.model import load_checkpoint, predict_proba
from pipeline.request_guard import json_problem
from pipeline.tables import TableError, feature_matrix

from .conftest import JSON, REPO, free_port, invoke_json, request, run_env, sh

TUTORIAL_X = [[1, 2], [2, 3], [3, 1], [4, 3], [5, 3], [6, 2]]
TUTORIAL_P = [2.7616e-04, 3.1595e-02, 3.8959e-02, 9.5624e-01, 9.9823e-01, 9.9969e-01]  # DESIGN.md
CHAMPION = "models:/BinaryClassifier@champion"
MAX_BODY = 65536  # a small limit for the test server, so "oversized" stays cheap


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory, template_store: Path) -> tuple[Path, str]:
    """A project dir whose store holds the tutorial model as @champion (the full pipeline, once)."""
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(REPO / "data/raw", root / "data/raw")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(template_store, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    sh([sys.executable, "-m", "pipeline", "run"], root, run_env(MLFLOW_TRACKING_URI=uri))
    return root, uri


@pytest.fixture(scope="module")
def server(registered: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory):
    """`mlflow models serve` on the champion, from a directory outside the repo."""
    _, uri = registered
    cwd = tmp_path_factory.mktemp("server")
    port = free_port()
    log = (cwd / "server.log").open("w")
    env = run_env(
        MLFLOW_TRACKING_URI=uri,
        SERVING_MODEL_CONFIG=json.dumps({"max_request_bytes": MAX_BODY}),
    )
    env.pop("PYTHONPATH", None)
    args = ["mlflow", "models", "serve", "-m", CHAMPION, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while request(port, "GET", "/ping")[0] != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"server did not start:\n{(cwd / 'server.log').read_text()}")
        time.sleep(0.3)
    yield port, cwd / "server.log"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    log.close()


def pipeline_proba(root: Path, X) -> np.ndarray:
    """The pipeline's own prediction: the train stage's checkpoint through the shared scoring path."""
    model, config = load_checkpoint(root / "models/model.pt")
    return predict_proba(model, config, np.asarray(X, dtype=np.float64))


# ---------------------------------------------------------------- served answers
def test_tutorial_probabilities_over_http(server, registered):
    port, _ = server
    status, answer = invoke_json(port, {"dataframe_split": {"columns": ["x1", "x2"], "data": TUTORIAL_X}})
    assert status == 200
    proba = [row["probability"] for row in answer["predictions"]]
    assert proba == pytest.approx(TUTORIAL_P, rel=2e-4)
    np.testing.assert_array_equal(proba, pipeline_proba(registered[0], TUTORIAL_X))
    assert [row["label"] for row in answer["predictions"]] == [0, 0, 0, 1, 1, 1]


ROWS = [{"x1": 1, "x2": 2}, {"x1": 6, "x2": 2}]
PAYLOADS = {
    "split_ints": {"dataframe_split": {"columns": ["x1", "x2"], "data": [[1, 2], [6, 2]]}},
    "split_float32": {"dataframe_split": {"columns": ["x1", "x2"], "data": np.float32([[1, 2], [6, 2]]).tolist()}},
    "split_reordered": {"dataframe_split": {"columns": ["x2", "x1"], "data": [[2.0, 1.0], [2.0, 6.0]]}},
    "records": {"dataframe_records": ROWS},
    "inputs_columns": {"inputs": {"x1": [1, 6], "x2": [2.0, 2.0]}},
    "inputs_records": {"inputs": ROWS},
    "instances": {"instances": ROWS},
}


@pytest.mark.parametrize("name", PAYLOADS)
def test_every_mlflow_payload_gives_the_same_answer(server, registered, name):
    port, _ = server
    status, answer = invoke_json(port, PAYLOADS[name])
    assert status == 200, answer
    expected = pipeline_proba(registered[0], [[1, 2], [6, 2]])
    assert [r["probability"] for r in answer["predictions"]] == pytest.approx(expected, abs=1e-12)
    assert [r["label"] for r in answer["predictions"]] == [0, 1]


def test_a_rows_answer_over_http_does_not_depend_on_its_batch(server, registered):
    port, _ = server
    X = np.random.default_rng(6).uniform(-10, 10, size=(30, 2))
    expected = pipeline_proba(registered[0], X)
    for size in (1, 4, 30):
        answers = []
        for start in range(0, len(X), size):
            rows = X[start : start + size].tolist()
            status, answer = invoke_json(port, {"dataframe_split": {"columns": ["x1", "x2"], "data": rows}})
            assert status == 200, answer
            answers += [row["probability"] for row in answer["predictions"]]
        np.testing.assert_array_equal(answers, expected)  # JSON carries floats exactly


def test_csv_and_parquet_bodies(server, registered):
    port, _ = server
    expected = pipeline_proba(registered[0], [[1, 2], [6, 2]])
    status, text = request(port, "POST", "/invocations", b"x1,x2\n1,2\n6,2\n", {"Content-Type": "text/csv"})
    assert status == 200 and [r["probability"] for r in json.loads(text)["predictions"]] == pytest.approx(expected)
    buffer = io.BytesIO()
    pd.DataFrame({"x1": [1.0, 6.0], "x2": [2.0, 2.0]}).to_parquet(buffer)
    headers = {"Content-Type": "application/vnd.apache.parquet"}
    status, text = request(port, "POST", "/invocations", buffer.getvalue(), headers)
    assert status == 200 and [r["probability"] for r in json.loads(text)["predictions"]] == pytest.approx(expected)


@pytest.mark.parametrize(
    "payload",
    [
        {"dataframe_split": {"columns": ["x1", "x2"], "data": []}},
        {"dataframe_split": {"data": []}},
        {"dataframe_records": []},
        {"inputs": []},
        {"instances": []},
    ],
)
def test_empty_batch_answers_an_empty_list(server, payload):
    assert invoke_json(server[0], payload) == (200, {"predictions": []})


def test_extra_columns_are_ignored_with_a_warning_in_the_log(server):
    port, log = server
    status, answer = invoke_json(port, {"dataframe_records": [{"x1": 1, "x2": 2, "id": 7}]})
    assert status == 200 and len(answer["predictions"]) == 1
    assert "Found extra inputs" in log.read_text()


def test_pipeline_serve_says_what_it_serves_and_how_to_call_it(registered, tmp_path):
    root, uri = registered
    port = free_port()
    args = [sys.executable, "-m", "pipeline", "serve", "--port", str(port)]
    proc = subprocess.Popen(
        args, cwd=root, env=run_env(MLFLOW_TRACKING_URI=uri), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        said = []
        for line in proc.stderr:
            said.append(line)
            if "mlflow models serve" in line:
                break
        text = "".join(said)
        assert "serving BinaryClassifier v1 (@challenger, @champion) from models:/BinaryClassifier@champion" in text
        assert "input columns: x1 (double), x2 (double); each row gets: probability, label" in text
        curl = shlex.split(next(line for line in said if "-d '" in line).strip())
        example = json.loads(curl[curl.index("-d") + 1])
        deadline = time.monotonic() + 90
        while request(port, "GET", "/ping")[0] != 200:
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.3)
        status, answer = invoke_json(port, example)  # the request it printed, as a person would paste it
        assert status == 200 and len(answer["predictions"]) == len(example["dataframe_split"]["data"])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


# ---------------------------------------------------------------- bad requests
def split(data, columns=("x1", "x2")) -> bytes:
    return json.dumps({"dataframe_split": {"columns": list(columns), "data": data}}).encode()


BIG = split([[1.5, 2.5]] * 6000)  # over MAX_BODY
BAD = {
    "missing column": (split([[1]], ["x1"]), JSON, 400, "missing inputs ['x2']"),
    "string": (split([[1, 2], ["abc", 2]]), JSON, 400, "request row 2, column 'x1': not a number: 'abc'"),
    "boolean": (split([[1, True]]), JSON, 400, "request row 1, column 'x2': not a number: True (booleans are refused"),
    "boolean record": (b'{"dataframe_records": [{"x1": false, "x2": 1}]}', JSON, 400, "row 1, column 'x1'"),
    "boolean input": (b'{"inputs": {"x1": [1, 2], "x2": [3, true]}}', JSON, 400, "row 2, column 'x2'"),
    "list in a cell": (split([[[1], 2]]), JSON, 400, "request row 1, column 'x1': not a number: [1]"),
    "deeply nested": (b"[" * 30_000 + b"]" * 30_000, JSON, 400, "nested too deeply"),
    "not UTF-8": (b'{"inputs": "\xff\xfe"}', JSON, 400, "not valid JSON"),
    "NaN": (b'{"dataframe_split": {"columns": ["x1", "x2"], "data": [[NaN, 2]]}}', JSON, 400, "column 'x1'"),
    "inf": (b'{"dataframe_split": {"columns": ["x1", "x2"], "data": [[1, -Infinity]]}}', JSON, 400, "column 'x2'"),
    "null": (split([[1, 2], [None, 2]]), JSON, 400, "row 2, column 'x1': missing"),
    "beyond float32": (split([[1e39, 2]]), JSON, 400, "beyond float32"),
    "malformed JSON": (b'{"dataframe_split": ', JSON, 400, "valid JSON"),
    "not a payload": (b'{"rows": [[1, 2]]}', JSON, 400, "exactly one of the input fields"),
    "wrong content type": (split([[1, 2]]), {"Content-Type": "text/plain"}, 415, "content types"),
    "no content type": (split([[1, 2]]), {}, 415, "missing Content-Type"),
    "unparseable CSV": (b'x1,x2\n"1,2\n', {"Content-Type": "text/csv"}, 400, "CSV"),
    "CSV string": (b"x1,x2\n1,2\nabc,2\n", {"Content-Type": "text/csv"}, 400, "request row 3, column 'x1'"),
    "CSV boolean": (b"x1,x2\nTrue,2\n", {"Content-Type": "text/csv"}, 400, "row 2, column 'x1': not a number: True"),
    "oversized body": (BIG, JSON, 413, f"over the limit of {MAX_BODY} bytes"),
    # Every CSV row is what the client sent: pandas would make an extra field the index and shift the columns.
    "CSV extra field": (
        b"x1,x2\n1,2,3\n",
        {"Content-Type": "text/csv"},
        400,
        "request row 2: 3 fields, but the header",
    ),
    "CSV short row": (b"x1,x2\n1,2\n3\n", {"Content-Type": "text/csv"}, 400, "request row 3: 1 fields, but the header"),
    "CSV quoted header": (b'"x1,x2"\n1,2\n', {"Content-Type": "text/csv"}, 400, "request row 2: 2 fields"),
    "CSV second header": (b"x1,x2\n1,2\nx1,x2\n", {"Content-Type": "text/csv"}, 400, "row 3, column 'x1': not a"),
    "CSV index column": (b",x1,x2\n0,1,2\n", {"Content-Type": "text/csv"}, 400, "column 1 has no name"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_request_is_a_clear_4xx_and_the_server_keeps_serving(server, case):
    port, _ = server
    body, headers, expected_status, fragment = BAD[case]
    status, text = request(port, "POST", "/invocations", body, headers)
    assert status == expected_status, text
    assert fragment in text
    assert "stack_trace" not in text and "Traceback" not in text
    assert request(port, "GET", "/ping")[0] == 200


def test_oversized_chunked_body_is_refused_while_reading(server):
    port, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    chunks = (BIG[i : i + 8192] for i in range(0, len(BIG), 8192))  # no Content-Length: counted as read
    try:
        conn.request("POST", "/invocations", body=chunks, headers=JSON, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 413 and b"over the limit" in response.read()
    finally:
        conn.close()
    assert request(port, "GET", "/ping")[0] == 200


CELLS = [True, False, None, "abc", "1", "", [], {}, [1, [2]], {"a": 1}, 1e308, -1e39, 10**30, 10**400, 0.5, -3]
TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "text/csv",
    "application/vnd.apache.parquet",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "\u00ff",
    "application/json; x",
]


def fuzz_requests(n: int, seed: int):
    """n malformed or odd requests (method, body, headers), seeded: random bytes, cells, shapes, nesting, CSV."""
    import random

    rng = random.Random(seed)

    def cell():
        return rng.choice(CELLS) if rng.random() < 0.5 else rng.uniform(-10, 10)

    def shape():
        rows = [[cell() for _ in range(rng.choice([0, 1, 2, 2, 3]))] for _ in range(rng.randint(0, 4))]
        columns = rng.choice([["x1", "x2"], ["x2", "x1"], ["x1"], ["x1", "x2", "x3"], [], [1, 2], None, "x1"])
        records = [{rng.choice(["x1", "x2", "y", ""]): cell() for _ in range(3)} for _ in range(rng.randint(0, 3))]
        return rng.choice(
            [
                {"dataframe_split": {"columns": columns, "data": rows}},
                {"dataframe_split": {"data": rows}},
                {"dataframe_split": rows},
                {"dataframe_records": records},
                {"dataframe_records": rows},
                {"inputs": {"x1": [cell()], "x2": cell()}},
                {"inputs": records},
                {"instances": rows},
                {"inputs": cell()},
                {"dataframe_split": {"columns": ["x1", "x2"], "data": [[1, 2]]}, "params": {"a": cell()}},
                {"dataframe_split": {"columns": ["x1", "x2"], "data": [[1, 2]]}, "inputs": []},
                {rng.choice(["rows", "data", ""]): rows},
                rows,
                cell(),
            ]
        )

    for _ in range(n):
        kind = rng.randrange(8)
        method, content_type = "POST", rng.choice(TYPES[:3]) if rng.random() < 0.8 else rng.choice(TYPES)
        if kind == 0:
            body = rng.randbytes(rng.randint(0, 3000))
        elif kind == 1:
            text = json.dumps(shape())
            body = text[: rng.randint(0, len(text))].encode()  # cut anywhere
        elif kind == 2:
            depth = rng.choice([10, 1000, 50_000, 200_000])
            opener, closer = rng.choice([("[", "]"), ('{"a":', "}"), ('{"inputs":[', "]}")])
            body = (opener * depth + "1" + closer * depth).encode()
        elif kind == 3:
            lines = [",".join(rng.choice(["x1", "x2", "x3", '"', "", "\ufeffx1"]) for _ in range(rng.randint(0, 3)))]
            lines += [",".join(str(cell()) for _ in range(rng.randint(0, 4))) for _ in range(rng.randint(0, 4))]
            body, content_type = "\n".join(lines).encode(), "text/csv"
        elif kind == 4:
            frame = pd.DataFrame({"x1": [rng.choice(CELLS[:6]) for _ in range(3)], "x2": [1.0, 2.0, 3.0]})
            buffer = io.BytesIO()
            try:
                frame.to_parquet(buffer)
            except Exception:
                buffer = io.BytesIO(rng.randbytes(200))
            body, content_type = buffer.getvalue(), "application/vnd.apache.parquet"
        elif kind == 5:
            method, body = rng.choice(["GET", "PUT", "DELETE", "PATCH"]), json.dumps(shape()).encode()
        else:
            body = json.dumps(shape()).encode()
        headers = {"Content-Type": content_type} if rng.random() < 0.97 else {}
        yield method, body, headers


def ragged_csv(body: bytes) -> bool:
    """Whether a CSV body has a row with another number of fields than its header (or an unnamed column)."""
    try:
        rows = [row for row in csv.reader(io.StringIO(body.decode("utf-8-sig"), newline=""), strict=True) if row]
    except (UnicodeDecodeError, csv.Error):
        return False
    return bool(rows) and (any(not name.strip() for name in rows[0]) or any(len(r) != len(rows[0]) for r in rows))


def test_fuzzed_requests_get_4xx_never_5xx(server):
    port, _ = server
    seen: dict[int, int] = {}
    for method, body, headers in fuzz_requests(3000, seed=0):
        status, text = request(port, method, "/invocations", body, headers)
        seen[status] = seen.get(status, 0) + 1
        assert 200 <= status < 500, (status, body[:200], headers, text[:500])
        assert "Traceback" not in text and "stack_trace" not in text, text[:500]
        if headers.get("Content-Type") == "text/csv" and method == "POST" and ragged_csv(body):
            assert status != 200, (body[:200], text[:500])  # an answer, but for rows the client never sent
    print("fuzzed request statuses:", dict(sorted(seen.items())))
    assert request(port, "GET", "/ping")[0] == 200


def test_prometheus_metrics(server):
    port, _ = server

    def count(text: str, status: str) -> float:
        line = next((x for x in text.splitlines() if x.startswith(f'invocations_total{{status="{status}"}}')), None)
        return 0.0 if line is None else float(line.split()[-1])

    before = request(port, "GET", "/metrics")[1]
    assert invoke_json(port, {"dataframe_split": {"columns": ["x1", "x2"], "data": [[1, 2]]}})[0] == 200
    assert request(port, "POST", "/invocations", split([[True, 2]]), JSON)[0] == 400
    status, after = request(port, "GET", "/metrics")
    assert status == 200 and "# TYPE invocation_seconds histogram" in after
    assert count(after, "200") == count(before, "200") + 1 and count(after, "400") == count(before, "400") + 1
    assert "invocation_seconds_bucket{le=" in after


# ---------------------------------------------------------------- the logged model, from Python
@pytest.mark.filterwarnings("ignore:``mlflow.models.utils.validate_serving_input`` is deprecated")
def test_logged_example_validates_for_serving(registered):
    import mlflow
    from mlflow.models import validate_serving_input
    from mlflow.models.utils import load_serving_example

    mlflow.set_tracking_uri(registered[1])
    mlflow.set_registry_uri(registered[1])
    example = load_serving_example(CHAMPION)
    answer = validate_serving_input(CHAMPION, example)
    assert list(answer.columns) == ["probability", "label"] and len(answer) == 5


def test_fresh_process_loads_from_the_registry_alone_without_pickle(registered, tmp_path):
    """The registered model holds no pickled object, and a process whose pickle refuses to load still serves it."""
    import mlflow
    import yaml

    mlflow.set_tracking_uri(registered[1])
    mlflow.set_registry_uri(registered[1])
    saved = Path(mlflow.artifacts.download_artifacts(CHAMPION, dst_path=str(tmp_path / "model")))
    pyfunc = yaml.safe_load((saved / "MLmodel").read_text())["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "pipeline.serving" and "python_model" not in pyfunc
    assert not [p for p in saved.rglob("*") if p.suffix in (".pkl", ".pickle", ".joblib")]
    code = (
        "import pickle\n"  # before anything imports it: every way to unpickle refuses
        "def refuse(*args, **kwargs):\n    raise RuntimeError('pickle refused')\n"
        "pickle.load = pickle.loads = pickle.Unpickler = refuse\n"
        "import mlflow, pandas as pd, numpy as np, json\n"
        f"m = mlflow.pyfunc.load_model({CHAMPION!r})\n"
        "import pipeline\n"
        "out = {t: m.predict(pd.DataFrame({'x1': np.array([1, 6], dtype=t), 'x2': np.array([2, 2], dtype=t)}))"
        "['probability'].tolist() for t in ('float32', 'float64')}\n"
        "print(json.dumps({'module': pipeline.__file__, **out}))\n"
    )
    env = run_env(MLFLOW_TRACKING_URI=registered[1])
    out = json.loads(sh([sys.executable, "-c", code], tmp_path, env).stdout.strip().splitlines()[-1])
    assert not Path(out["module"]).is_relative_to(REPO)  # the code/ copy inside the model, not the repo
    expected = pipeline_proba(registered[0], [[1, 2], [6, 2]])
    assert out["float32"] == pytest.approx(expected, abs=1e-12) and out["float64"] == out["float32"]


def test_device_comes_from_model_config(registered):
    import mlflow

    mlflow.set_tracking_uri(registered[1])
    mlflow.set_registry_uri(registered[1])
    frame = pd.DataFrame({"x1": [1.0, 6.0], "x2": [2.0, 2.0]})
    expected = pipeline_proba(registered[0], [[1, 2], [6, 2]])
    if torch.cuda.is_available():
        gpu = mlflow.pyfunc.load_model(CHAMPION, model_config={"device": "cuda"})
        assert gpu.predict(frame)["probability"].to_numpy() == pytest.approx(expected, abs=1e-6)
    else:
        with pytest.raises(ValueError, match="'cuda' was requested but is not available"):
            mlflow.pyfunc.load_model(CHAMPION, model_config={"device": "cuda"})
    cpu = mlflow.pyfunc.load_model(CHAMPION)
    assert cpu.predict(frame)["probability"].to_numpy() == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------- shared input checks
def test_wide_json_requests_pass_in_bulk_and_a_bad_cell_is_still_named():
    features = tuple(f"x{j}" for j in range(1, 101))
    rows = [[i, *r] for i, r in enumerate(np.random.default_rng(0).normal(size=(2000, 99)).tolist())]  # ints too

    def payload(data: list[list]) -> dict:
        return {"dataframe_split": {"columns": ["id", *features], "data": [[f"r{i}", *r] for i, r in enumerate(data)]}}

    assert json_problem(payload(rows), features) is None  # a text id column beside the features is not checked
    cells = {True: "not a number: True", None: "missing", "abc": "not a number: 'abc'", 1e39: "1e+39 is beyond float32",
             float("nan"): "missing", 10**400: "an integer of 401 digits"}  # fmt: skip
    for cell, words in cells.items():
        bad = [list(r) for r in rows]
        bad[-1][-1] = cell
        assert json_problem(payload(bad), features).startswith(f"request row 2000, column 'x100': {words}")


def test_feature_matrix_accepts_numbers_and_names_bad_cells():
    features = ("x1", "x2")
    frame = pd.DataFrame({"x2": np.float32([2, 3]), "x1": np.int64([1, 2]), "id": ["a", "b"]})
    np.testing.assert_array_equal(feature_matrix(frame, features), [[1, 2], [2, 3]])
    assert feature_matrix(pd.DataFrame({"x1": ["1.5"], "x2": [0]}), features).tolist() == [[1.5, 0.0]]  # as in CSV
    cases = [
        (pd.DataFrame({"x1": [1.0]}), "missing column(s) ['x2']"),
        (pd.DataFrame({"x1": [1.0, 2.0], "x2": [1.0, "two"]}), "row 11, column 'x2': not a number: 'two'"),
        (pd.DataFrame({"x1": [1.0, np.nan], "x2": [1.0, 2.0]}), "row 11, column 'x1': missing"),
        (pd.DataFrame({"x1": [1.0], "x2": [np.inf]}), "row 10, column 'x2'"),
        (pd.DataFrame({"x1": [1, True], "x2": [0, 1]}), "row 11, column 'x1': not a number: True"),
        (pd.DataFrame({"x1": [False], "x2": [0]}), "row 10, column 'x1': not a number: False"),
        (pd.DataFrame({"x1": [10**400], "x2": [0]}), "row 10, column 'x1': an integer of 401 digits is beyond"),
    ]
    for frame, message in cases:
        with pytest.raises(TableError, match=rf"^{message[:12]}") as info:
            feature_matrix(frame, features, first_row=10)
        assert message in str(info.value)


# ---------------------------------------------------------------- batch scoring
def predict_cli(registered, *args):
    root, uri = registered
    old = os.getcwd()
    os.chdir(root)
    try:
        return CliRunner().invoke(main, ["predict", *args], env={"MLFLOW_TRACKING_URI": uri}, catch_exceptions=False)
    finally:
        os.chdir(old)


def test_batch_scoring_csv_and_parquet_in_chunks(registered, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 8, size=(25, 2))
    frame = pd.DataFrame({"id": np.arange(25), "x1": X[:, 0], "x2": X[:, 1], "other": "z"})
    frame.to_csv(tmp_path / "in.csv", index=False)
    frame.to_parquet(tmp_path / "in.parquet")
    expected = pipeline_proba(registered[0], X)
    for src, dst in [("in.csv", "out.csv"), ("in.parquet", "out.parquet"), ("in.csv", "out2.parquet")]:
        result = predict_cli(
            registered,
            "--input",
            str(tmp_path / src),
            "--output",
            str(tmp_path / dst),
            "--keep",
            "id",
            "--batch-rows",
            "7",
        )
        assert result.exit_code == 0, result.output
        assert "scored 25 rows" in result.output
        out = pd.read_csv(tmp_path / dst) if dst.endswith(".csv") else pd.read_parquet(tmp_path / dst)
        assert list(out.columns) == ["id", "probability", "label"]
        np.testing.assert_array_equal(out["id"], np.arange(25))
        np.testing.assert_array_equal(out["probability"], expected)  # bit for bit, chunks of 7 against one batch
        np.testing.assert_array_equal(out["label"], (expected >= 0.5).astype(int))
    assert not list(tmp_path.glob(".*tmp"))


def test_batch_scoring_a_parquet_dataset_keeps_input_order_and_names_the_file(registered, tmp_path):
    """A folder (or glob) of Parquet files is scored as one table, files in name order, into one output file."""
    rng = np.random.default_rng(1)
    X = rng.integers(0, 8, size=(40, 2))
    frame = pd.DataFrame({"id": np.arange(40), "x1": X[:, 0], "x2": X[:, 1]})
    folder = tmp_path / "table.parquet"  # as Spark names a dataset's folder
    (folder / "z").mkdir(parents=True)
    frame.iloc[30:].to_parquet(folder / "z" / "part-0.parquet")  # written first, read last: names decide
    frame.iloc[:12].to_parquet(folder / "part-0.parquet")
    frame.iloc[12:30].to_parquet(folder / "part-1.parquet")
    expected = pipeline_proba(registered[0], X)
    for source in (folder, folder / "**" / "*.parquet"):
        out = tmp_path / "out.parquet"
        result = predict_cli(
            registered, "--input", str(source), "--output", str(out), "--keep", "id", "--batch-rows", "7"
        )
        assert result.exit_code == 0, result.output
        assert "scored 40 rows" in result.output
        scored = pd.read_parquet(out)
        np.testing.assert_array_equal(scored["id"], np.arange(40))
        np.testing.assert_array_equal(scored["probability"], expected)
    bad = frame.iloc[12:30].copy()
    bad.loc[bad.index[4], "x2"] = np.nan
    bad.to_parquet(folder / "part-1.parquet")
    result = predict_cli(registered, "--input", str(folder), "--output", str(tmp_path / "out.parquet"))
    assert result.exit_code == 1 and "part-1.parquet, row 5, column 'x2': missing" in result.output
    frame.iloc[12:30][["x1", "x2"]].to_parquet(folder / "part-1.parquet")
    result = predict_cli(registered, "--input", str(folder), "--output", str(tmp_path / "out.parquet"))
    assert result.exit_code == 1 and "part-1.parquet: columns ['x1', 'x2'] differ from" in result.output


def test_batch_scoring_on_ray_gives_the_local_engines_probabilities(registered, tmp_path):
    """cluster.engine ray: each file of a dataset scored by a task on a real local Ray instance, the same bits."""
    rng = np.random.default_rng(2)
    X = rng.integers(0, 8, size=(3000, 2))
    frame = pd.DataFrame({"id": np.arange(3000), "x1": X[:, 0], "x2": X[:, 1]})
    folder = tmp_path / "table"
    folder.mkdir()
    for i, (lo, hi) in enumerate([(0, 1000), (1000, 2200), (2200, 3000)]):
        frame.iloc[lo:hi].to_parquet(folder / f"part-{i}.parquet")
    args = ["--input", str(folder), "--keep", "id", "--batch-rows", "500"]
    local = predict_cli(registered, *args, "--output", str(tmp_path / "local.parquet"))
    on_ray = ["--set", "cluster.engine=ray", "--set", "cluster.workers=2"]
    result = predict_cli(registered, *args, "--output", str(tmp_path / "ray.parquet"), *on_ray)
    assert local.exit_code == 0 and result.exit_code == 0, result.output
    assert "scored 3000 rows" in result.output and "on Ray (2 tasks at a time)" in result.output
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "ray.parquet"), pd.read_parquet(tmp_path / "local.parquet")
    )
    bad = frame.iloc[2200:3000].copy()
    bad.loc[bad.index[9], "x1"] = np.nan
    bad.to_parquet(folder / "part-2.parquet")
    result = predict_cli(registered, *args, "--output", str(tmp_path / "ray.parquet"), *on_ray)
    assert result.exit_code == 1 and "part-2.parquet, row 10, column 'x1': missing" in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "content, message",
    [
        ("x1,x2\n1,2\n3,abc\n", "in.csv, row 3, column 'x2': not a number: 'abc'"),
        ("x1,x2\n1,2\n3,\n", "in.csv, row 3, column 'x2': missing, NaN or infinite value"),
        ("x1,x3\n1,2\n", "in.csv: missing column(s) ['x2']"),
        ("", "in.csv: empty file"),
        ("x1,x2\n1,2\n3,True\n", "in.csv, row 3, column 'x2': not a number: 'True'"),
        ("x1,x2\n1,2\n3,1e39\n", "in.csv, row 3, column 'x2': 1e+39 is beyond float32"),
        ("x1,x2\n1,2\n3,4,5\n", "in.csv, row 3: expected 2 columns, got 3"),
        ("x1,x2\n1,2\n3\n", "in.csv, row 3: expected 2 columns, got 1"),
        ('"x1,x2"\n1,2\n', "in.csv: missing column(s) ['x1', 'x2']"),
        ("x1,x2\n1,2\nx1,x2\n", "in.csv, row 3, column 'x1': not a number: 'x1'"),
        (",x1,x2\n0,1,2\n", "in.csv: header has empty or duplicate column names"),
        ("x1;x2\n1;2\n", "in.csv: one column 'x1;x2': the file looks ';'-separated"),
    ],
)
def test_batch_scoring_errors_name_the_cell_and_keep_earlier_output(registered, tmp_path, content, message):
    (tmp_path / "in.csv").write_text(content)
    out = tmp_path / "out.csv"
    out.write_text("earlier output\n")
    result = predict_cli(registered, "--input", str(tmp_path / "in.csv"), "--output", str(out))
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert out.read_text() == "earlier output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv"]


@pytest.mark.parametrize("name", ["in.csv", "in.parquet"])
def test_batch_scoring_error_in_a_later_chunk_names_its_row_and_keeps_earlier_output(registered, tmp_path, name):
    """Chunks are read one ahead on another thread: a bad cell there still stops the scoring at its own row."""
    frame = pd.DataFrame({"x1": np.arange(30, dtype=float), "x2": 1.0})
    frame.loc[22, "x2"] = np.nan  # the fourth chunk of 7 rows
    src = tmp_path / name
    frame.to_csv(src, index=False) if name.endswith(".csv") else frame.to_parquet(src)
    out = tmp_path / "out.parquet"
    out.write_bytes(b"earlier output")
    result = predict_cli(registered, "--input", str(src), "--output", str(out), "--batch-rows", "7")
    row = 24 if name.endswith(".csv") else 23  # a CSV's header is line 1; a Parquet file counts rows from 1
    assert result.exit_code == 1, result.output
    assert f"{name}, row {row}, column 'x2': missing, NaN or infinite value" in result.output
    assert out.read_bytes() == b"earlier output"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "out.parquet"])


@pytest.mark.parametrize(
    "columns, message",
    [
        ({"x1": [1.0, 2.0, 3.0, np.nan], "x2": [1.0, 2.0, np.inf, 4.0]}, "row 3, column 'x2'"),  # rows come first
        ({"x1": [1.0, 2.0, np.nan, 4.0], "x2": [1.0, 2.0, np.inf, 4.0]}, "row 3, column 'x1'"),  # then columns
        ({"x1": pd.array([1, None, 3, 4], dtype="Int64"), "x2": [1.0, 2.0, 3.0, 4.0]}, "row 2, column 'x1'"),
    ],
)
def test_batch_scoring_names_the_first_bad_cell_in_row_order(registered, tmp_path, columns, message):
    """Parquet is checked column by column; the error still names the cell a reader of the rows meets first."""
    pd.DataFrame(columns).to_parquet(tmp_path / "in.parquet")
    result = predict_cli(registered, "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "o.parquet"))
    assert result.exit_code == 1, result.output
    assert f"in.parquet, {message}: missing, NaN or infinite value" in result.output, result.output


@pytest.mark.parametrize("cell", ["abc", "True", "1e39", "", "inf"])
def test_a_bad_cell_gets_the_same_words_from_prepare_batch_scoring_and_the_server(registered, server, tmp_path, cell):
    from pipeline import preparation
    from pipeline.sources import open_source

    (tmp_path / "t.csv").write_text(f"x1,x2,y\n1,2,0\n3,{cell},1\n")
    with pytest.raises(TableError) as prepared:
        preparation.prepare_dir(
            tmp_path / "p", open_source(str(tmp_path / "t.csv"), "y", None, 0, 0, 1, None), 0, 1, False, "error"
        )
    result = predict_cli(registered, "--input", str(tmp_path / "t.csv"), "--output", str(tmp_path / "o.csv"))
    said = str(prepared.value).removesuffix(" (prepare.missing: drop drops such rows)")
    assert result.exit_code == 1 and said in result.output, (said, result.output)
    status, text = request(
        server[0], "POST", "/invocations", f"x1,x2\n1,2\n3,{cell}\n".encode(), {"Content-Type": "text/csv"}
    )
    assert status == 400 and said.split(", ", 1)[1] in text, (said, text)  # the same words after the file's name


def test_batch_scoring_rejects_unknown_file_types(registered, tmp_path):
    (tmp_path / "in.txt").write_text("x1,x2\n1,2\n")
    result = predict_cli(registered, "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "o.csv"))
    assert result.exit_code == 1 and "in.txt: unknown file type" in result.output


def test_scaling_travels_inside_the_logged_model(tmp_path):
    import mlflow

    from pipeline.model import BinaryClassifier, ModelConfig, checkpoint_bytes
    from pipeline.serving import pyfunc_spec

    torch.manual_seed(0)
    config = ModelConfig(3, ("a", "b", "c"), 0.3, mean=(10.0, -2.0, 0.5), scale=(4.0, 0.5, 2.0))
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(checkpoint_bytes(BinaryClassifier(3), config))
    X = np.random.default_rng(1).normal(5, 3, size=(20, 3))
    spec = pyfunc_spec(checkpoint, config.features, X[:2], {"device": "cpu", "max_request_bytes": MAX_BODY})
    mlflow.pyfunc.save_model(tmp_path / "pyfunc", **spec)
    answer = mlflow.pyfunc.load_model(str(tmp_path / "pyfunc")).predict(pd.DataFrame(X, columns=["a", "b", "c"]))
    model, loaded = load_checkpoint(checkpoint)
    expected = predict_proba(model, loaded, X)
    np.testing.assert_array_equal(answer["probability"], expected)
    np.testing.assert_array_equal(answer["label"], (expected >= 0.3).astype(int))
    assert not np.allclose(expected, predict_proba(model, ModelConfig(3, config.features, 0.3), X))
