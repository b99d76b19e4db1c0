"""Sensitivity on executors (in-process and a local Ray runtime give the same numbers), measured
per coupled channel group and per residual block, and the executors' refusals."""

from __future__ import annotations

import copy
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import pruning_core.experiments as E
from pruning_core.calibration import recalibrate_batchnorm
from pruning_core.data import load_dataset
from pruning_core.errors import UserError
from pruning_core.evaluate import evaluate
from pruning_core.executor import (
    RAY_MISSING,
    InProcess,
    RayExecutor,
    get_executor,
    list_executors,
)
from pruning_core.models import load_model
from pruning_core.prune import PruneConfig, prune_


@pytest.fixture(scope="module")
def resnet():  # type: ignore[no-untyped-def]
    return load_model("shapes-resnet"), load_dataset("shapes")


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_ray_local_runtime_measures_what_in_process_measures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loaded, data = load_model("digits-cnn"), load_dataset("digits")
    kw = {"ratios": [0.5, 0.9], "limit": 120, "device": "cpu"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each Ray worker (one CPU per task): same float sums
    try:
        local = E.sensitivity(loaded, data, **kw)
        local_ch = E.sensitivity(loaded, data, granularity="channel", **{**kw, "ratios": [0.5]})
    finally:
        torch.set_num_threads(threads)
    assert local.attrs["executor"] == "inprocess" and len(local) == 6

    def not_here(*_: object) -> None:
        raise AssertionError("a point was measured in the test process")

    # The driver's copy of the code refuses to measure: every point must run in a worker.
    monkeypatch.setattr(E._SensitivityContext, "measure", not_here)
    seen: list[float] = []
    with RayExecutor(num_cpus=2) as ray_exec:
        remote = E.sensitivity(
            loaded, data, executor=ray_exec, progress=lambda p: seen.append(p.fraction), **kw
        )
        remote_ch = E.sensitivity(
            loaded, data, granularity="channel", executor=ray_exec, **{**kw, "ratios": [0.5]}
        )
    assert remote.attrs["executor"] == "ray" and not remote.attrs["cancelled"]
    assert remote.equals(local), (remote, local)
    assert remote_ch.equals(local_ch), (remote_ch, local_ch)
    assert sorted(seen) == [i / 6 for i in range(1, 7)]
    import ray

    assert not ray.is_initialized()  # the runtime it started is shut down


def test_coupled_convs_are_one_channel_unit(resnet) -> None:  # type: ignore[no-untyped-def]
    loaded, data = resnet
    # A member of a residual group names its group: layer1.1.conv2 is in the stem conv's,
    # whose channels the two blocks of layer1 add to (their second convs lose the same ones).
    df = E.sensitivity(
        loaded, data, ratios=[0.5], granularity="channel", limit=100, device="cpu",
        layers=["layer1.1.conv2", "layer1.0.conv1", "layer2.1.conv2"],
    )  # fmt: skip
    assert list(df["layer"]) == ["conv1", "layer1.0.conv1", "layer2.0.shortcut.0"]
    assert list(df["members"]) == [
        "conv1,layer1.0.conv2,layer1.1.conv2",
        "layer1.0.conv1",  # inside a block, nothing is added to it: a unit of its own
        "layer2.0.conv2,layer2.0.shortcut.0,layer2.1.conv2",
    ]
    assert list(df["layer_sparsity"]) == [0.5, 0.5, 0.5]
    # The point is what pruning the group does: prune_ with that ratio on the unit.
    model = copy.deepcopy(loaded.model)
    config = PruneConfig(
        granularity="channel", ratio=0.0, layer_ratios=(("conv1", 0.5),), structured_mode="mask"
    )
    prune_(model, config, data=data, spec=loaded.spec)
    for name in ("conv1", "layer1.0.conv2", "layer1.1.conv2"):
        w = model.get_submodule(name).weight
        assert int((w.flatten(1).abs().sum(1) == 0).sum()) == 8  # 8 of 16 filters, each
    acc = evaluate(model, data, loaded.spec, limit=100, device="cpu").accuracy
    assert df["accuracy"][0] == acc


def test_block_sensitivity_removes_one_block_at_a_time(resnet) -> None:  # type: ignore[no-untyped-def]
    loaded, data = resnet
    df = E.sensitivity(loaded, data, ratios=[0.5], granularity="block", limit=100, device="cpu")
    assert list(df["layer"]) == ["layer1.0", "layer1.1", "layer2.1", "layer3.1"]
    assert (df["ratio"] == 1.0).all() and (df["layer_sparsity"] == 1.0).all()
    assert df["members"][0] == "layer1.0.conv1,layer1.0.conv2"
    assert df["params"][0] == 2 * 16 * 16 * 9
    assert (df["drop"] > 0).any()
    # The point equals the model with that block replaced by the identity (BN re-estimated).
    model = copy.deepcopy(loaded.model)
    setattr(model.get_submodule("layer2"), "1", nn.Identity())
    with torch.no_grad():
        recalibrate_batchnorm(model, data, loaded.spec)
    acc = evaluate(model, data, loaded.spec, limit=100, device="cpu").accuracy
    assert df.set_index("layer")["accuracy"]["layer2.1"] == pytest.approx(acc, abs=0.011)
    with pytest.raises(UserError, match="not a prunable layer"):
        E.sensitivity(loaded, data, granularity="block", layers=["layer2.0"], device="cpu")


def test_unknown_executor_and_misplaced_address() -> None:
    assert list_executors() == ["inprocess", "ray"]
    with pytest.raises(UserError, match=r"unknown executor 'dask' \(choose from inprocess, ray\)"):
        get_executor("dask")
    with pytest.raises(UserError, match="ray executor"):
        get_executor("inprocess", address="127.0.0.1:6379")
    loaded, data = load_model("digits-mlp"), load_dataset("digits")
    with pytest.raises(UserError, match="unknown executor"):
        E.sensitivity(loaded, data, ratios=[0.5], executor="dask")


def test_an_address_where_nothing_listens_is_refused_at_once() -> None:
    with socket.socket() as s:  # a loopback port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(UserError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        get_executor("ray", address=f"127.0.0.1:{port}")
    assert time.perf_counter() - start < 10  # not Ray's minutes of retries
    import ray

    assert not ray.is_initialized()


def _listener(reply: bytes | None) -> tuple[socket.socket, threading.Thread]:
    """A 127.0.0.1 server that reads the client's first bytes and answers `reply` (None:
    never answers)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.recv(64)
            if reply is not None:
                conn.sendall(reply)
            threading.Timer(8.0, conn.close).start()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (b"HTTP/1.0 400 Bad request\r\n\r\n", "not a gRPC server"),  # a web server
        (None, "did not reply within"),  # accepts and stays silent
    ],
)
def test_a_listener_that_is_not_a_ray_cluster_is_refused_in_seconds(
    monkeypatch: pytest.MonkeyPatch, reply: bytes | None, says: str
) -> None:
    import pruning_core.executor as ex

    monkeypatch.setattr(ex, "CONNECT_SECONDS", 1.0)
    srv, _ = _listener(reply)
    port = srv.getsockname()[1]
    try:
        start = time.perf_counter()
        with pytest.raises(UserError, match=says) as err:
            ex._check_reachable(f"127.0.0.1:{port}")
        assert time.perf_counter() - start < 5 and "\n" not in str(err.value)
        # An HTTP/2 server answers the preface with a SETTINGS frame: that passes the check.
    finally:
        srv.close()
    h2, _ = _listener(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    try:
        ex._check_reachable(f"ray://127.0.0.1:{h2.getsockname()[1]}")
    finally:
        h2.close()


def test_ray_missing_is_one_line(monkeypatch: pytest.MonkeyPatch, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    for make in (lambda: get_executor("ray"), RayExecutor):
        with pytest.raises(UserError) as err:
            make()
        assert str(err.value) == RAY_MISSING and "\n" not in RAY_MISSING
        assert "uv sync --group ray" in RAY_MISSING and "pruning-lab[ray]" in RAY_MISSING
    out = tmp_path / "s.csv"
    code, stdout, stderr = cli(
        "sensitivity", "--model", "no-such-model", "--dataset", "digits", "--out", str(out),
        "--executor", "ray",
    )  # fmt: skip
    # Refused for Ray before the (unknown) model is even looked at.
    assert code == 2 and stdout == "" and "uv sync --group ray" in stderr
    assert len(stderr.strip().splitlines()) == 1 and not out.exists()


def _scaled(k: int, x: int) -> int:
    return k * x


def test_in_process_map_reports_and_stops_on_cancel() -> None:
    cancel = threading.Event()
    seen: list[tuple[int, int]] = []

    def done(i: int, r: int) -> None:
        seen.append((i, r))
        if i == 1:
            cancel.set()

    with get_executor() as ex:
        assert isinstance(ex, InProcess) and ex.local
        assert ex.map(_scaled, [1, 2, 3], shared=10) == {0: 10, 1: 20, 2: 30}
        assert ex.map(_scaled, [1, 2, 3], shared=10, on_done=done, cancel=cancel) == {
            0: 10,
            1: 20,
        }
    assert seen == [(0, 10), (1, 20)]


def test_cli_sensitivity_by_block_has_units_and_no_per_unit_suggestion(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    out = tmp_path / "b.csv"
    code, stdout, stderr = cli(
        "sensitivity", "--model", "shapes-resnet", "--dataset", "shapes", "--granularity",
        "block", "--limit", "60", "--device", "cpu", "--executor", "inprocess", "--out",
        str(out), "--json",
    )  # fmt: skip
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["layers"] == ["layer1.0", "layer1.1", "layer2.1", "layer3.1"]
    assert doc["units"]["layer2.1"] == ["layer2.1.conv1", "layer2.1.conv2"]
    assert doc["suggestion"] is None and doc["executor"] == "inprocess"
    assert "members" in out.read_text().splitlines()[0]
