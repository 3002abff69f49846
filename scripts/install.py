#!/usr/bin/env python3
"""streamvj's installer: one stdlib-only script for Linux, Windows and macOS.

    python3 scripts/install.py --dev        # Linux / macOS (scripts/setup.sh runs this)
    py scripts\\install.py --dev             # Windows

It makes `.venv`, picks the torch build this machine can use, installs streamvj into it with
the extras that work on this platform, and prints what it chose and why. `--dry-run` prints
the plan and the pip commands without running them.

Why a script and not a bare `pip install`: the right torch wheel depends on facts pip does not
look at. PyPI's Linux torch is the CUDA build (several GB of CUDA libraries, useless without an
NVIDIA GPU) and PyPI's Windows torch is CPU-only (useless for a VJ with an NVIDIA GPU). The
decision is `decide()`, a pure function of `Facts`, tested with faked platforms in
tests/scripts/test_install.py. Stdlib only, so it runs before anything is installed, and Python
3.8+ syntax, so an old interpreter gets the version message below instead of a SyntaxError.

STREAMVJ_TORCH overrides the torch step: its words are passed to `pip install` as they are,
e.g. STREAMVJ_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126".
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

TORCH_VERSION = "2.13.0"
TORCH_SPEC = f"torch=={TORCH_VERSION}"
TORCH_INDEX = "https://download.pytorch.org/whl"
CPU_INDEX = f"{TORCH_INDEX}/cpu"
# torch 2.13's CUDA builds, newest first, with the lowest driver CUDA version each runs on. The
# cu126 build runs on any CUDA 12 driver (CUDA minor-version compatibility, driver R525+).
CUDA_BUILDS = (((13, 0), "cu130"), ((12, 0), "cu126"))
MIN_PYTHON = (3, 10)
PROBE_TIMEOUT_S = 5.0  # an unreachable index must cost seconds, not pip's minutes of retries
BASE_EXTRAS = ("ndi", "midi")
PLATFORM_EXTRAS = {"Windows": ("spout",), "Darwin": ("syphon",)}
ENV_OVERRIDE = "STREAMVJ_TORCH"
# The newest CPython every extra has prebuilt wheels for: python-rtmidi 1.5.8 (extra midi) ships
# them up to 3.12 on every OS (SpoutGL 0.1.1 up to 3.13); on a newer Python pip compiles it.
PREBUILT_UP_TO = (3, 12)
COMPILER = {"Windows": "Visual Studio Build Tools with C++", "Darwin": "Xcode's command line tools",
            "Linux": "a C++ compiler and the ALSA headers (libasound2-dev)"}
REPO = Path(__file__).resolve().parents[1]
# The reference StreamDiffusion that benchmarks/reference_streamdiffusion.py measures streamvj against
# (dev only). Installed without its dependencies: its metadata pins diffusers==0.24.0, which would
# replace streamvj's diffusers, and its pipeline module imports only torch, numpy, PIL and diffusers.
REFERENCE_NO_DEPS = ("streamdiffusion==0.1.1",)


class PlanError(Exception):
    """This machine cannot get a working torch by any automatic route; the message says why and what to do."""


@dataclass(frozen=True)
class Facts:
    """What the torch choice depends on (from `gather_facts`, or faked in tests)."""

    system: str  # platform.system(): "Linux", "Windows", "Darwin"
    machine: str  # platform.machine(): "x86_64", "AMD64", "arm64", "aarch64"
    gpus: tuple[str, ...] = ()  # NVIDIA GPU names; empty = none found
    driver_cuda: tuple[int, int] | None = None  # newest CUDA the NVIDIA driver runs; None = unknown
    gpu_note: str = ""  # how the GPUs were looked for, or why none were found
    python: tuple[int, int] = PREBUILT_UP_TO  # the Python the environment is made with

    def describe(self) -> str:
        gpu = ", ".join(self.gpus) if self.gpus else "no NVIDIA GPU"
        if self.gpus and self.driver_cuda:
            gpu += f" (driver supports CUDA {self.driver_cuda[0]}.{self.driver_cuda[1]})"
        return f"{self.system} {self.machine}, {gpu}"


@dataclass(frozen=True)
class TorchSource:
    """One way to install torch: a pip requirement, from an index (None = pip's configured one)."""

    args: tuple[str, ...]  # arguments for `pip install`
    index_url: str | None
    what: str  # for people: which build this is


@dataclass(frozen=True)
class Plan:
    torch: tuple[TorchSource, ...]  # tried in order; the next only when the one before cannot be had
    extras: tuple[str, ...]
    reasons: tuple[str, ...]  # one line each: what was chosen and why
    no_deps: tuple[str, ...] = ()  # installed last, with --no-deps (REFERENCE_NO_DEPS)

    def requirement(self) -> str:
        """The pip argument that installs streamvj itself (editable) with this plan's extras."""
        return f".[{','.join(self.extras)}]" if self.extras else "."


def decide(facts: Facts, torch_override: str | None = None, dev: bool = False) -> Plan:
    """The install plan for this machine: pure, so every platform's choice is tested here."""
    extras = BASE_EXTRAS + PLATFORM_EXTRAS.get(facts.system, ()) + (("dev",) if dev else ())
    reasons = []
    if facts.system == "Windows":
        reasons.append("extra spout: Windows, so Spout (SpoutGL) for TouchDesigner and Resolume")
    elif facts.system == "Darwin":
        reasons.append("extra syphon: macOS, so Syphon for TouchDesigner and Resolume")
    reasons.append("extras ndi, midi: NDI video and MIDI controllers (all platforms)")
    no_deps = REFERENCE_NO_DEPS if dev else ()
    if dev:
        reasons.append("extra dev: test tools (pytest, ruff, onnxruntime, ...)")
        reasons.append(f"{', '.join(no_deps)} without its dependencies: the reference the GPU check compares with "
                       "(its pinned diffusers 0.24.0 is not needed)")
    note = newer_python_note(facts)
    if note:
        reasons.append(note)
    if torch_override:
        args = split_override(torch_override, facts.system)
        reasons.insert(0, f"torch: `pip install {torch_override}` because {ENV_OVERRIDE} is set")
        return Plan((TorchSource(args, None, f"{ENV_OVERRIDE}={torch_override}"),), extras, tuple(reasons), no_deps)
    sources, why = _torch_sources(facts)
    reasons.insert(0, f"torch: {sources[0].what}, because {why}")
    return Plan(sources, extras, tuple(reasons), no_deps)


def split_override(value: str, system: str) -> tuple[str, ...]:
    """STREAMVJ_TORCH's words. On Windows a backslash is a path separator, not an escape
    (POSIX splitting turned C:\\wheels\\torch.whl into C:wheelstorch.whl); quotes still group."""
    if system != "Windows":
        return tuple(shlex.split(value))
    return tuple(w[1:-1] if len(w) > 1 and w[0] == w[-1] and w[0] in "\"'" else w
                 for w in shlex.split(value, posix=False))


def newer_python_note(facts: Facts) -> str:
    """What a Python newer than PREBUILT_UP_TO costs here, and how to avoid it ("" when nothing)."""
    if facts.python <= PREBUILT_UP_TO:
        return ""
    have, want = ".".join(map(str, facts.python)), ".".join(map(str, PREBUILT_UP_TO))
    how = f"py -{want} scripts\\install.py" if facts.system == "Windows" else f"python{want} scripts/install.py"
    return (f"note: Python {have}: python-rtmidi (extra midi) has no prebuilt wheel for it, so pip compiles it, "
            f"which needs {COMPILER.get(facts.system, 'a C++ compiler')}; Python {want} installs everything "
            f"prebuilt: {how}")


def _torch_sources(facts: Facts) -> tuple[tuple[TorchSource, ...], str]:
    pypi_default = TorchSource((TORCH_SPEC,), None, f"{TORCH_SPEC} from PyPI")
    if facts.system == "Darwin":
        if facts.machine != "arm64":
            raise PlanError(
                f"torch {TORCH_VERSION} has no build for Intel Macs (PyTorch's last was 2.2), so streamvj "
                f"needs Apple silicon and an arm64 Python (this Python is {facts.machine}: on Apple silicon "
                f"that means it runs under Rosetta); to try another torch anyway, set {ENV_OVERRIDE}")
        return (pypi_default,), "macOS on Apple silicon: PyPI's build is the one with the Metal (MPS) backend"
    if facts.system not in ("Linux", "Windows"):
        return (pypi_default,), f"{facts.system} is not a platform streamvj knows; PyPI's default build"
    if facts.gpus:
        build = _cuda_build(facts.driver_cuda)
        if build is None:
            cuda = ".".join(map(str, facts.driver_cuda or ()))
            return _cpu_sources(facts.system), (
                f"the NVIDIA driver only runs CUDA {cuda} and torch {TORCH_VERSION}'s oldest CUDA build needs "
                f"a CUDA 12 driver (R525 or newer): update the driver and run this again for the GPU build")
        cuda = TorchSource((TORCH_SPEC,), f"{TORCH_INDEX}/{build}", f"{TORCH_SPEC} CUDA build ({build}) "
                           f"from {TORCH_INDEX}/{build}")
        gpu = f"NVIDIA GPU {facts.gpus[0]}"
        if facts.driver_cuda is None:
            why = f"{gpu} found but its driver's CUDA version is unknown; {build} runs on any CUDA 12 driver"
        else:
            why = f"{gpu} with a driver for CUDA {facts.driver_cuda[0]}.{facts.driver_cuda[1]}"
        if facts.system == "Linux":
            # PyPI's Linux wheel is itself a CUDA build: a fine second choice.
            return (cuda, TorchSource((TORCH_SPEC,), None, f"{TORCH_SPEC} from PyPI (PyPI's Linux build uses "
                                      "CUDA)")), why
        return (cuda,), why  # PyPI's Windows wheel is CPU-only: no fallback that would use the GPU
    return _cpu_sources(facts.system), f"no NVIDIA GPU was found ({facts.gpu_note or 'nvidia-smi found none'})"


def _cpu_sources(system: str) -> tuple[TorchSource, ...]:
    if system == "Windows":
        return (TorchSource((TORCH_SPEC,), None, f"{TORCH_SPEC} from PyPI (PyPI's Windows build is CPU-only)"),)
    cpu = TorchSource((TORCH_SPEC,), CPU_INDEX, f"{TORCH_SPEC} CPU-only build (~200 MB) from {CPU_INDEX}")
    # Where that index cannot be reached, PyPI still has torch: on Linux x86_64 that is the CUDA build
    # (it works on a CPU, but downloads several GB of CUDA libraries), or a local CPU wheel where
    # pip is configured with one.
    fallback = TorchSource((TORCH_SPEC,), None, f"{TORCH_SPEC} from pip's default index (on stock Linux x86_64 "
                           "PyPI's CUDA build: works on CPU, several GB larger)")
    return (cpu, fallback)


def _cuda_build(driver_cuda: tuple[int, int] | None) -> str | None:
    if driver_cuda is None:
        return CUDA_BUILDS[-1][1]
    for needs, name in CUDA_BUILDS:
        if driver_cuda >= needs:
            return name
    return None


def parse_nvidia_smi(query_output: str) -> tuple[tuple[str, ...], tuple[int, int] | None]:
    """GPU names and the driver's CUDA version from `nvidia-smi -q` output."""
    names = tuple(m.group(1).strip() for m in re.finditer(r"^\s*Product Name\s*:\s*(.+)$", query_output, re.M))
    cuda = re.search(r"CUDA Version\s*:\s*(\d+)\.(\d+)", query_output)
    return names, (int(cuda.group(1)), int(cuda.group(2))) if cuda else None


def gather_facts() -> Facts:
    system, machine, python = platform.system(), platform.machine(), tuple(sys.version_info[:2])
    if system == "Darwin":
        return Facts(system, machine, gpu_note="macOS: no NVIDIA GPUs", python=python)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return Facts(system, machine, gpu_note="nvidia-smi is not on PATH", python=python)
    try:
        done = subprocess.run([smi, "-q"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Facts(system, machine, gpu_note=f"nvidia-smi failed: {exc}", python=python)
    if done.returncode != 0:
        last = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        return Facts(system, machine, gpu_note=f"nvidia-smi exited {done.returncode}: {last[0]}", python=python)
    gpus, cuda = parse_nvidia_smi(done.stdout)
    return Facts(system, machine, gpus, cuda, gpu_note="" if gpus else "nvidia-smi lists no GPU", python=python)


def index_unreachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the package index answers, else why not (one short line)."""
    try:
        urllib.request.urlopen(urllib.request.Request(f"{url}/torch/", method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))
    return None


def local_label(version: str) -> str:
    """'cpu' for '2.13.0+cpu', 'cu130' for '2.13.0+cu130', '' for PyPI's plain '2.13.0'."""
    return version.partition("+")[2]


def torch_satisfies(installed: str | None, plan: Plan) -> bool:
    """Whether the torch already in the environment is the one the plan would install (rerun = no work)."""
    if installed is None or installed.partition("+")[0] != TORCH_VERSION:
        return False
    first = plan.torch[0]
    if first.index_url is None:  # the PyPI/default build: any 2.13.0 is it or something chosen on purpose
        return True
    wanted, have = first.index_url.rsplit("/", 1)[1], local_label(installed)
    return have in ("", wanted) or (wanted.startswith("cu") and have.startswith("cu"))


# --- doing it -------------------------------------------------------------------------------

def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def say(line: str) -> None:
    print(f"streamvj install: {line}", flush=True)


def run(cmd: list, dry_run: bool) -> int:
    say("$ " + " ".join(shlex.quote(str(c)) for c in cmd))
    return 0 if dry_run else subprocess.call([str(c) for c in cmd], cwd=REPO)


def installed_torch(py: Path) -> str | None:
    if not py.exists():
        return None
    code = "import importlib.metadata as m\ntry: print(m.version('torch'))\nexcept m.PackageNotFoundError: pass"
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True).stdout.strip()
    return out or None


def install_torch(py: Path, plan: Plan, override: bool, dry_run: bool) -> bool:
    pip = [py, "-m", "pip", "install", "-q"]
    have = installed_torch(py)
    if not override and torch_satisfies(have, plan):
        say(f"torch {have} is already installed: keeping it (set {ENV_OVERRIDE} to install another)")
        return True
    replace = have if not override else None  # another build of torch that must make room
    for i, source in enumerate(plan.torch):
        later = plan.torch[i + 1] if i + 1 < len(plan.torch) else None
        if source.index_url:
            reason = index_unreachable(source.index_url)
            if reason is not None:
                say(f"cannot reach {source.index_url} ({reason})")
                if later is None:
                    return False
                say(f"falling back to {later.what}")
                continue
            # Fail fast on a flaky index too: the fallback is one step away.
            extra = ["--index-url", source.index_url, "--retries", "1", "--timeout", "30"]
        else:
            extra = []
        if replace is not None:
            # pip keeps an installed 2.13.0+cpu for the requirement torch==2.13.0 whatever the index
            # offers (a local version label does not count in ==), so a rerun after the NVIDIA driver
            # went in would keep the CPU build: remove it first, once the new one's index answers.
            say(f"replacing torch {replace} with {source.what}")
            if run([py, "-m", "pip", "uninstall", "-q", "-y", "torch"], dry_run) != 0:
                return False
            replace = None
        if run(pip + list(source.args) + extra, dry_run) == 0:
            return True
        if later is None:
            return False
        say(f"installing {source.what} failed; falling back to {later.what}")
    return False


def check_torch(py: Path, plan: Plan) -> None:
    """Say which torch ended up installed, and whether a wanted GPU is usable."""
    wants_cuda = any(s.index_url and "/cu" in s.index_url for s in plan.torch)
    code = "import torch; print(torch.__version__, torch.cuda.is_available())" if wants_cuda else (
        "import importlib.metadata as m; print(m.version('torch'), '-')")
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        say(f"torch does not import: {out.stderr.strip().splitlines()[-1:]}")
        return
    version, cuda = out.stdout.split()
    say(f"torch {version} installed" + ("" if cuda == "-" else f"; CUDA usable: {cuda == 'True'}"))
    if cuda == "False":
        say("warning: the GPU build is installed but CUDA is not usable; run "
            f"`{py} -c \"import torch; torch.zeros(1).cuda()\"` to see why (usually the NVIDIA driver)")


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dev", action="store_true", help="also install the test tools (extra 'dev')")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and commands, change nothing")
    parser.add_argument("--venv", type=Path, default=REPO / ".venv", help="where the environment goes (default .venv)")
    args = parser.parse_args(argv)
    if sys.version_info[:2] < MIN_PYTHON:
        say(f"needs Python {'.'.join(map(str, MIN_PYTHON))}+ (this is {platform.python_version()}); "
            "run this script with a newer python")
        return 2
    facts = gather_facts()
    override = os.environ.get(ENV_OVERRIDE, "").strip() or None
    try:
        plan = decide(facts, override, dev=args.dev)
    except PlanError as exc:
        say(str(exc))
        return 2
    say(f"this machine: {facts.describe()}; Python {platform.python_version()}")
    for reason in plan.reasons:
        say(reason)
    py = venv_python(args.venv)
    if not py.exists() and run([sys.executable, "-m", "venv", args.venv], args.dry_run) != 0:
        say("could not make the virtual environment (Debian/Ubuntu: `apt install python3-venv`)")
        return 1
    if run([py, "-m", "pip", "install", "-q", "--upgrade", "pip"], args.dry_run) != 0:
        return 1
    if not install_torch(py, plan, override is not None, args.dry_run):
        say(f"could not install torch; set {ENV_OVERRIDE} to a pip spec that works here and rerun")
        return 1
    if run([py, "-m", "pip", "install", "-q", "-e", plan.requirement()], args.dry_run) != 0:
        note = newer_python_note(facts)
        if note:
            say(note)
        return 1
    if plan.no_deps and run([py, "-m", "pip", "install", "-q", "--no-deps", *plan.no_deps], args.dry_run) != 0:
        say(f"could not install {', '.join(plan.no_deps)}: the GPU check's reference stage will say it was skipped")
    if not args.dry_run:
        check_torch(py, plan)
    say(f"done: {py} run_engine.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
