"""scripts/gpu_check.sh: its CPU dry run (the same script, tiny model, 64x64), and its report's rules.

The dry run keeps the GPU check from rotting between GPU runs: every stage must leave its
JSON, stages that need CUDA or NVML must say why they were skipped, and the reference
StreamDiffusion must really run where it is installed (scripts/install.py --dev installs it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.paths import REPO

_spec = importlib.util.spec_from_file_location("gpu_check_report", REPO / "scripts" / "gpu_check_report.py")
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)

STAGES = ["versions", "cuda_tests", "bench", "reference", "runtime", "controlnet", "temporal", "power", "cold_start"]
REFERENCE_INSTALLED = importlib.util.find_spec("streamdiffusion") is not None

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="the check script needs bash and coreutils' timeout (Linux)")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu_check")
    # Block names under the leak check's prefix (tests/conftest.py): a block left behind fails the test.
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_SHM_TAG": f"svj_{os.getpid()}_gpucheck"}
    proc = subprocess.Popen(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--bundle",
                             str(folder / "bundle.tgz"), str(folder / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        out, err = proc.communicate(timeout=540)  # about 45 s on an idle 2-core CPU
    except subprocess.TimeoutExpired:
        proc.terminate()  # the script stops its running stage's process group, then itself
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"the dry run took over 540 s; it got to:\n{err[-2000:]}")
    return folder, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _stage(folder, name: str) -> dict:
    return json.loads((folder / "out" / f"{STAGES.index(name) + 1:02d}_{name}.json").read_text())


def test_dry_run_writes_every_stage_and_a_summary(dry_run):
    folder, proc = dry_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = {name: _stage(folder, name) for name in STAGES}
    for name, record in records.items():
        assert record["stage"] == name and (folder / "out" / f"{STAGES.index(name) + 1:02d}_{name}.log").is_file()
        assert record["status"] in ("ok", "skipped"), (name, record.get("log_tail"))
    summary = json.loads((folder / "out" / "summary.json").read_text())
    assert summary == json.loads(proc.stdout)  # printed at the end too
    assert list(summary["stages"]) == STAGES
    assert (folder / "bundle.tgz").stat().st_size > 0


def test_dry_run_measures_on_the_cpu(dry_run):
    folder, _ = dry_run
    versions = _stage(folder, "versions")["result"]
    assert versions["packages"]["torch"] and versions["gpu"] is None
    bench = _stage(folder, "bench")["result"]
    assert bench["width"] == 64 and [r["variant"] for r in bench["results"]] == ["eager"]
    runtime = _stage(folder, "runtime")["result"]
    assert runtime["pattern_to_null"]["frames"] > 0
    shm = runtime["shm_to_shm"]
    assert shm["output_frames"] > 0 and shm["latency_p50_ms"] > 0 and shm["output"]["jitter_p99_ms"] >= 0
    controlnet = _stage(folder, "controlnet")["result"]
    assert set(controlnet["controlnets"]) == {"0", "1", "2"} and controlnet["preprocess_ms_median"] > 0
    assert all(r["fps"] > 0 for r in controlnet["controlnets"].values())
    temporal = _stage(folder, "temporal")["result"]
    assert temporal["width"] == 64 and temporal["device"] == "cpu"
    cold = _stage(folder, "cold_start")["result"]
    assert cold["cold"]["first_frame_s"] > 0
    headline = json.loads((folder / "out" / "summary.json").read_text())["headline"]
    assert headline["gpu"] is None and headline["compute_ms_per_frame"] > 0
    assert set(headline["controlnet_fps"]) == {"0", "1", "2"} and headline["controlnet_fps"]["0"] > 0
    assert headline["temporal"]["off (no bank installed)"]["flicker"] > 0
    assert all(t["met"] is None for t in headline["targets"].values())  # GPU targets are not judged on a CPU


def test_dry_run_says_why_gpu_stages_are_skipped(dry_run):
    folder, _ = dry_run
    tests = _stage(folder, "cuda_tests")
    assert tests["status"] == "skipped" and "no CUDA GPU" in tests["reason"]
    assert tests["result"]["collected"] > 0  # the CUDA tests still import and collect
    power = _stage(folder, "power")
    assert power["status"] == "skipped" and "NVML" in power["reason"]


def test_dry_run_runs_the_reference_where_it_is_installed(dry_run):
    folder, _ = dry_run
    record = _stage(folder, "reference")
    if not REFERENCE_INSTALLED:
        assert record["status"] == "skipped" and "streamdiffusion" in record["reason"]
        return
    result = record["result"]
    assert record["status"] == "ok" and result["reference"]["fps"] > 0 and result["best_vs_reference"] > 0
    assert result["streamvj"][0]["fps"] > 0 and result["width"] == 64


def test_a_spent_budget_skips_stages_and_says_so(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_BUDGET": "0"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stages = json.loads((tmp_path / "summary.json").read_text())["stages"]
    assert list(stages) == STAGES
    assert all(s["status"] == "skipped" and s["reason"].startswith("out of time: 0 s of the 0 s budget left")
               for s in stages.values())


# ---- the report's rules, without running anything -------------------------------------------------------


def test_stage_status_comes_from_exit_code_result_and_skip_reason(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("line\n" * 40)
    res = tmp_path / "x.result.json"
    assert report.stage_record("bench", 124, 200, 200, res, log)["status"] == "timeout"
    failed = report.stage_record("bench", 1, 3, 200, res, log)
    assert failed["status"] == "failed" and len(failed["log_tail"]) == 25 and failed["result"] is None
    res.write_text(json.dumps({"skipped": "no NVML"}))
    skipped = report.stage_record("power", 0, 1, 50, res, log)
    assert skipped["status"] == "skipped" and skipped["reason"] == "no NVML"
    res.write_text(json.dumps({"fps": 3.0}))
    assert report.stage_record("bench", 0, 1, 50, res, log) == {
        "stage": "bench", "rc": 0, "seconds": 1.0, "limit_s": 50.0, "status": "ok", "result": {"fps": 3.0}}


def test_cuda_test_counts_come_from_pytests_last_line(tmp_path):
    log = tmp_path / "t.log"
    log.write_text("....F\n1 failed, 20 passed, 2 skipped, 1180 deselected in 33.2s\n")
    record = report.stage_record("cuda_tests", 1, 40, 120, tmp_path / "none.json", log)
    assert record["status"] == "failed"
    assert record["result"] == {"failed": 1, "passed": 20, "skipped": 2, "deselected": 1180}
    assert report.pytest_counts("26/1241 tests collected (1215 deselected) in 9s") == {
        "collected": 26, "deselected": 1215}


def _write_stage(folder, k, name, result, status="ok"):
    (folder / f"{k:02d}_{name}.json").write_text(json.dumps({"stage": name, "status": status, "seconds": 1.0,
                                                             "limit_s": 10.0, "result": result}))


def test_summary_judges_the_targets_on_a_gpu(tmp_path):
    _write_stage(tmp_path, 1, "versions", {"gpu": "NVIDIA H200"})
    _write_stage(tmp_path, 3, "bench", {"results": [
        {"steps": 1, "variant": "eager", "fps": 60.0, "fps_pipelined": 70.0, "ms_median": 16.0},
        {"steps": 1, "variant": "compile + cuda graph", "fps": 250.0, "fps_pipelined": 320.0, "ms_median": 4.0},
        {"steps": 1, "variant": "diffusers AutoPipelineForImage2Image", "fps": 30.0, "ms_median": 33.0}]})
    _write_stage(tmp_path, 4, "reference", {"reference": {"fps": 100.0}, "best_pipelined_vs_reference": 3.2})
    _write_stage(tmp_path, 5, "runtime", {"shm_to_shm": {"latency_p50_ms": 7.0, "output": {"jitter_p99_ms": 0.8}}})
    _write_stage(tmp_path, 6, "power", None, status="timeout")
    summary = report.summary(tmp_path)
    head = summary["headline"]
    assert head["gpu"] == "NVIDIA H200" and head["best_variant"] == "compile + cuda graph"
    assert head["compute_ms_per_frame"] == 4.0 and head["power_w"] == {"similarity_off": None, "similarity_on": None}
    assert head["targets"] == {
        "fps_pipelined >= 300": {"value": 320.0, "met": True},
        "vs reference >= 2x": {"value": 3.2, "met": True},
        "glass-to-glass <= 1.5x compute": {"value": 1.75, "met": False},
        "jitter p99 < 2 ms": {"value": 0.8, "met": True}}
    assert summary["stages"]["power"]["status"] == "timeout"
