"""AppTest of the Export page's "Quantize to int8" section: the control, a background run on
digits-cnn, the float vs int8 figure (accuracy with its tolerance band, size, latency in ONNX
Runtime at batch 1 and 32), the verdict, and the quantized directory as a zip that reopens."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import torch
from apptest_helpers import find_chart
from streamlit.testing.v1 import AppTest

from pruning_core.quantize import INT8_ACCURACY_TOLERANCE, int8_verdict, load_quantized
from ui.texts_runtime import QUANT_EXPLAINED

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "6_export.py")


def _wait(at: AppTest, timeout: float = 120.0) -> None:
    from pruning_core.jobs import get_runner

    job_id = at.session_state["tradeoff_quantize_job"]
    if job_id:
        job = get_runner().get(job_id)
        assert job is not None and job.wait(timeout), "the quantize job did not finish"
        assert job.status == "done", job.error
    at.run()


def test_quantize_dense_digits_cnn_in_the_background(tmp_path: Path) -> None:
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["model_ref"] = "digits-cnn"
    at.session_state["dataset_ref"] = "digits"
    at.run()
    assert not at.exception, at.exception
    mode = at.radio(key="export_quant_mode")
    assert mode.options == ["static (calibrated on the calibration split)",
                            "dynamic (no calibration)"]  # fmt: skip
    assert any(m.value == QUANT_EXPLAINED for m in at.markdown)
    assert find_chart(at, "export_quant_chart") is None
    assert at.button(key="export_quantize").label == "Quantize the dense model to int8"

    at.button(key="export_quantize").click().run()
    assert not at.exception, at.exception
    _wait(at)
    assert not at.exception, at.exception
    spec = find_chart(at, "export_quant_chart")
    assert spec is not None
    acc = [t for t in spec["data"] if t["type"] == "scatter"]
    assert [t["x"] for t in acc] == [["float"], ["int8"]]
    assert all(0.9 < t["y"][0] <= 1.0 for t in acc)  # digits-cnn is ~98% in both
    band = spec["layout"]["shapes"][0]  # float ± the tolerance, clipped at 100%
    f = acc[0]["y"][0]
    assert abs(band["y0"] - (f - INT8_ACCURACY_TOLERANCE)) < 1e-9
    assert abs(band["y1"] - min(1.0, f + INT8_ACCURACY_TOLERANCE)) < 1e-9
    bars = [t for t in spec["data"] if t["type"] == "bar"]
    size = [t for t in bars if t["x"] in (["float"], ["int8"])]
    kib = {t["x"][0]: t["y"][0] for t in size}
    assert kib["int8"] < kib["float"] / 2  # int8 weights: about a quarter of float
    lat = {t["name"]: t for t in bars if "name" in t and "ONNX Runtime" in t["name"]}
    assert sorted(lat) == ["float, ONNX Runtime", "int8, ONNX Runtime"]
    for t in lat.values():
        assert t["x"] == ["batch 1", "batch 32"]
        assert all(y > 0 for y in t["y"]) and t["error_y"]["array"]
    words = [a["text"] for a in spec["layout"]["annotations"]]
    assert sum(("faster" in w or "slower" in w or "no measurable difference" in w)
               for w in words) == 2  # fmt: skip
    verdict = [s.value for s in at.success]
    assert any(v.startswith("Within the stated int8 tolerance") for v in verdict), verdict
    assert any(d.label.startswith("Download the int8 model") for d in at.get("download_button"))

    # The download is the quantized directory; unzipped, it reopens with the same accuracy.
    res = at.session_state["tradeoff_quantize_result"]
    a = res["attrs"]
    with zipfile.ZipFile(io.BytesIO(a["zip"])) as zf:
        names = sorted(zf.namelist())
        assert names == ["digits-cnn-dense-int8/model.onnx", "digits-cnn-dense-int8/quantized.json"]
        zf.extractall(tmp_path)
    qm = load_quantized(tmp_path / "digits-cnn-dense-int8")
    assert qm.mode == "static"
    assert qm.meta["measured"]["int8_accuracy"] == a["int8_accuracy"]
    s = qm.spec
    assert qm(torch.zeros(2, s.channels, s.size, s.size)).shape == (2, 10)

    # A result of another version of the session's model (pruned since) is not shown as this one's.
    at.session_state["tradeoff_quantize_result"]["attrs"]["version"] = "an earlier model"
    at.run()
    assert not at.exception, at.exception
    assert find_chart(at, "export_quant_chart") is None
    assert any(c.value.startswith("Not quantized yet for this model") for c in at.caption)


class _Ctx:
    """What a job function is given, without a runner."""

    def report(self, *_: Any, **__: Any) -> None:
        pass

    def check_cancelled(self) -> None:
        pass


def test_the_job_quantizes_a_shrunk_model_and_leaves_no_folder(tmp_path: Path) -> None:
    import tempfile

    from pruning_core.data import load_dataset
    from pruning_core.models import load_model
    from pruning_core.prune import PruneConfig, prune_
    from ui.quantize_panel import quantize_job

    lm, data = load_model("digits-cnn"), load_dataset("digits")
    before = sum(p.numel() for p in lm.model.parameters())
    prune_(lm.model, PruneConfig(method="magnitude", granularity="channel", ratio=0.5),
           data=data, spec=lm.spec)  # fmt: skip
    assert sum(p.numel() for p in lm.model.parameters()) < before  # physically shrunk
    left = set(Path(tempfile.gettempdir()).glob("pruning-lab-int8-app-*"))
    m = quantize_job(lm.model, lm.spec, data, "dynamic", source="digits-cnn", folder="shrunk-int8",
                     version="v1", val_limit=100)  # fmt: skip
    out = m.fn(_Ctx())  # type: ignore[arg-type]
    a = out["attrs"]
    assert a["mode"] == "dynamic" and a["version"] == "v1" and a["n_val"] == 100
    assert a["int8_bytes"] < a["float_bytes"]
    assert out["frame"]["model"] == ["float", "int8", "float", "int8"]
    assert out["frame"]["batch_size"] == [1, 1, 32, 32]
    assert out["frame"]["vs_float"][0] == "the reference"
    with zipfile.ZipFile(io.BytesIO(a["zip"])) as zf:
        assert sorted(zf.namelist()) == ["shrunk-int8/model.onnx", "shrunk-int8/quantized.json"]
        meta = json.loads(zf.read("shrunk-int8/quantized.json"))
    assert meta["mode"] == "dynamic" and meta["source"] == "digits-cnn"
    # Written into a temporary folder of its own, removed once zipped.
    assert set(Path(tempfile.gettempdir()).glob("pruning-lab-int8-app-*")) <= left


def test_verdict_names_what_is_outside_the_tolerance() -> None:
    a = {"float_accuracy": 0.97, "int8_accuracy": 0.93, "top1_agreement": 0.96,
         "max_abs_diff": 0.5, "logit_scale": 10.0, "within_tolerance": False,
         "n_compared": 512}  # fmt: skip
    ok, words = int8_verdict(a)
    assert not ok
    assert words.startswith("Outside the stated int8 tolerance")
    assert "-4.00 points" in words and "same top-1" not in words  # only the failed check
    ok, words = int8_verdict({**a, "int8_accuracy": 0.965, "within_tolerance": True})
    assert ok and "-0.50 points" in words and "96.0%" in words
