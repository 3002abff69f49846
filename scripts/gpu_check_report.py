"""scripts/gpu_check.sh's bookkeeping: the versions stage, each stage's JSON, and the summary.

    python scripts/gpu_check_report.py versions --json-out FILE
    python scripts/gpu_check_report.py stage NAME RC SECONDS LIMIT RESULT_JSON LOG   # prints the stage's JSON
    python scripts/gpu_check_report.py skip NAME REASON                            # a stage not started
    python scripts/gpu_check_report.py summary DIR                                 # prints the summary JSON

Stdlib only (the summary runs after every stage, in a second). A stage's JSON says what
happened whatever happened: ok (its result), skipped (why, said by the stage itself: no
CUDA, no NVML, the reference not installed), timeout, or failed (exit code, log tail).
The summary gathers the headline numbers and checks them against issue 15's targets.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

# Issue 15's targets on an H100/H200, 512x512 1-step img2img, sd-turbo architecture, TAESD.
TARGET_FPS_PIPELINED = 300.0
TARGET_VS_REFERENCE = 2.0
TARGET_GLASS_TO_GLASS_X_COMPUTE = 1.5
TARGET_JITTER_P99_MS = 2.0
TIMEOUT_CODES = (124, 137)  # timeout(1)'s own code; 128 + SIGKILL after --kill-after
PYTEST_COUNTS = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)\b")
PYTEST_COLLECTED = re.compile(r"(\d+)(?:/\d+)? tests? collected")  # "26/1241 tests collected (1215 deselected)"
PACKAGES = ("torch", "triton", "diffusers", "transformers", "numpy", "pydantic", "nvidia-ml-py", "streamdiffusion",
            "tensorrt")


# ---- versions -------------------------------------------------------------------------------------------


def versions() -> dict:
    out: dict = {"python": platform.python_version(), "machine": platform.machine(), "packages": {}}
    for name in PACKAGES:
        try:
            out["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out["packages"][name] = None
    try:
        import torch

        out["cuda_available"] = torch.cuda.is_available()
        out["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            out.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                       compute_capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                       cudnn=torch.backends.cudnn.version())
    except ImportError as exc:
        out["torch_error"] = str(exc)
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    out.setdefault("gpu", None)
    return out


# ---- one stage ------------------------------------------------------------------------------------------


def pytest_counts(log: str) -> dict[str, int]:
    """pytest's closing counts ("3 passed, 2 skipped", "12/900 tests collected (888 deselected)")."""
    tail = "\n".join(log.strip().splitlines()[-3:])
    counts: dict[str, int] = {}
    for number, what in PYTEST_COUNTS.findall(tail):
        counts["error" if what.startswith("error") else what] = int(number)
    collected = PYTEST_COLLECTED.search(tail)
    if collected:
        counts["collected"] = int(collected.group(1))
    return counts


def stage_record(name: str, rc: int, seconds: float, limit: float, result_path: Path, log_path: Path) -> dict:
    log = log_path.read_text(errors="replace") if log_path.is_file() else ""
    result = None
    if result_path.is_file():
        try:
            result = json.loads(result_path.read_text())
        except ValueError as exc:
            result = {"unreadable": str(exc)}
    if result is None and name == "cuda_tests":
        result = pytest_counts(log)
        if "collected" in result and not (result.keys() & {"passed", "failed", "error"}):
            result["skipped"] = f"no CUDA GPU here: {result['collected']} CUDA-marked tests collected, none run"
    record: dict = {"stage": name, "rc": rc, "seconds": round(seconds, 1), "limit_s": limit}
    if rc in TIMEOUT_CODES:
        record["status"] = "timeout"
    elif isinstance(result, dict) and isinstance(result.get("skipped"), str):  # a reason, not pytest's count
        record["status"], record["reason"] = "skipped", str(result["skipped"])
    elif rc == 0:
        record["status"] = "ok"
    else:
        record["status"] = "failed"
    if record["status"] != "ok":
        record["log_tail"] = log.strip().splitlines()[-25:]
    record["result"] = result
    return record


# ---- the summary ----------------------------------------------------------------------------------------


def _stages(folder: Path) -> dict[str, dict]:
    stages = {}
    for path in sorted(folder.glob("[0-9][0-9]_*.json")):
        try:
            record = json.loads(path.read_text())
        except ValueError:
            continue
        stages[record.get("stage", path.stem)] = record
    return stages


def _result(stages: dict, name: str) -> dict:
    record = stages.get(name) or {}
    # Whatever a stage wrote, also when cut short (cold_start writes its cold run before its warm one).
    result = record.get("result")
    return result if isinstance(result, dict) else {}


def _check(value: float | None, ok: bool | None) -> dict:
    return {"value": value, "met": ok}


def headline(stages: dict) -> dict:
    """The numbers issue 15 asks for, each None when its stage did not finish."""
    out: dict = {"gpu": _result(stages, "versions").get("gpu")}
    bench = _result(stages, "bench").get("results", [])
    one = [r for r in bench if r.get("steps") == 1 and not r["variant"].startswith("diffusers")]
    best = max(one, key=lambda r: r["fps"], default=None)
    out["bench_1_step"] = {r["variant"]: {k: r.get(k) for k in ("fps", "fps_pipelined", "ms_median")} for r in bench
                           if r.get("steps") == 1}
    pipelined = max((r.get("fps_pipelined") or 0.0 for r in one), default=0.0) or None
    compute_ms = best["ms_median"] if best else None
    reference = _result(stages, "reference")
    e2e = _result(stages, "runtime").get("shm_to_shm", {})
    null = _result(stages, "runtime").get("pattern_to_null", {})
    power = _result(stages, "power").get("power_static_scene", {})
    cold = _result(stages, "cold_start")
    g2g = e2e.get("latency_p50_ms")
    jitter = (e2e.get("output") or {}).get("jitter_p99_ms")
    out.update({
        "best_variant": best["variant"] if best else None, "compute_ms_per_frame": compute_ms,
        "reference_fps": (reference.get("reference") or {}).get("fps"),
        # The last seconds' rate (no start-up in it); the whole run's average when the run was too short for one.
        "runtime_fps_pattern_to_null": null.get("fps_at_end") or null.get("fps_average"),
        "runtime_shm": {k: e2e.get(k) for k in ("input_fps", "output_fps", "latency_p50_ms", "latency_p99_ms")},
        "power_w": {k: (power.get(k) or {}).get("gpu_power_w") for k in ("similarity_off", "similarity_on")},
        "start_s": {k: (cold.get(k) or {}).get("first_frame_s") for k in ("cold", "warm")},
        # Issues 12 and 13: fps with 0, 1, 2 ControlNets; each temporal setting's flicker and extra ms.
        "controlnet_fps": {k: r.get("fps") for k, r in (_result(stages, "controlnet").get("controlnets") or {}).items()},
        "temporal": {r["name"]: {k: r.get(k) for k in ("flicker", "ms_median", "extra_ms")}
                     for r in _result(stages, "temporal").get("settings", []) if "name" in r},
    })
    vs_ref = reference.get("best_pipelined_vs_reference") or reference.get("best_vs_reference")
    ratio = round(g2g / compute_ms, 2) if g2g and compute_ms else None
    cuda = bool(out["gpu"])  # targets are for a GPU: on a CPU (the dry run) they are not judged
    out["targets"] = {
        f"fps_pipelined >= {TARGET_FPS_PIPELINED:g}": _check(
            pipelined, pipelined >= TARGET_FPS_PIPELINED if cuda and pipelined else None),
        f"vs reference >= {TARGET_VS_REFERENCE:g}x": _check(vs_ref, vs_ref >= TARGET_VS_REFERENCE if cuda and vs_ref else None),
        f"glass-to-glass <= {TARGET_GLASS_TO_GLASS_X_COMPUTE:g}x compute": _check(
            ratio, ratio <= TARGET_GLASS_TO_GLASS_X_COMPUTE if cuda and ratio else None),
        f"jitter p99 < {TARGET_JITTER_P99_MS:g} ms": _check(
            jitter, jitter < TARGET_JITTER_P99_MS if cuda and jitter is not None else None),
    }
    return out


def summary(folder: Path) -> dict:
    stages = _stages(folder)
    return {"stages": {name: {k: r.get(k) for k in ("status", "seconds", "limit_s", "reason")}
                       for name, r in stages.items()},
            "seconds": round(sum(r.get("seconds") or 0.0 for r in stages.values()), 1),
            "headline": headline(stages)}


def main(argv: list[str]) -> int:
    if argv[:1] == ["versions"] and len(argv) == 3 and argv[1] == "--json-out":
        text = json.dumps(versions())
        Path(argv[2]).write_text(text + "\n")
        print(text)
        return 0
    if argv[:1] == ["stage"] and len(argv) == 7:
        name, rc, seconds, limit, result, log = argv[1:]
        print(json.dumps(stage_record(name, int(rc), float(seconds), float(limit), Path(result), Path(log)), indent=1))
        return 0
    if argv[:1] == ["skip"] and len(argv) == 3:
        print(json.dumps({"stage": argv[1], "status": "skipped", "reason": argv[2], "seconds": 0.0, "result": None}))
        return 0
    if argv[:1] == ["summary"] and len(argv) == 2:
        print(json.dumps(summary(Path(argv[1])), indent=1))
        return 0
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
