"""scripts/install.py: the platform decisions with faked facts, and the fall-back paths with a faked pip."""

from __future__ import annotations

import http.server
import importlib.util
import socket
import sys
import threading
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

from tests.paths import REPO

_spec = importlib.util.spec_from_file_location("streamvj_install", REPO / "scripts" / "install.py")
install = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = install  # dataclasses look their module up by name
_spec.loader.exec_module(install)

Facts = install.Facts
SPEC = install.TORCH_SPEC
H200 = ("NVIDIA H200",)


def indexes(plan) -> list:
    return [s.index_url for s in plan.torch]


def test_windows_with_nvidia_gets_the_cuda_build_and_spout():
    plan = install.decide(Facts("Windows", "AMD64", ("NVIDIA GeForce RTX 4090",), (13, 0)))
    assert indexes(plan) == ["https://download.pytorch.org/whl/cu130"]  # PyPI's Windows torch is CPU-only
    assert plan.torch[0].args == (SPEC,)
    assert plan.extras == ("ndi", "midi", "spout")
    assert "RTX 4090" in plan.reasons[0] and "CUDA 13.0" in plan.reasons[0]


def test_a_cuda_12_driver_gets_the_cu126_build():
    plan = install.decide(Facts("Windows", "AMD64", ("NVIDIA GeForce RTX 3060",), (12, 4)))
    assert indexes(plan) == ["https://download.pytorch.org/whl/cu126"]


def test_an_unknown_driver_cuda_version_gets_the_most_compatible_cuda_build():
    plan = install.decide(Facts("Linux", "x86_64", H200, None))
    assert indexes(plan)[0] == "https://download.pytorch.org/whl/cu126"
    assert "unknown" in plan.reasons[0]


def test_windows_without_gpu_gets_pypi_which_is_cpu_only_there():
    plan = install.decide(Facts("Windows", "AMD64", (), None, "nvidia-smi is not on PATH"))
    assert indexes(plan) == [None] and plan.torch[0].args == (SPEC,)
    assert "CPU-only" in plan.torch[0].what
    assert "spout" in plan.extras and "nvidia-smi is not on PATH" in plan.reasons[0]


def test_macos_arm64_gets_the_default_build_and_syphon():
    plan = install.decide(Facts("Darwin", "arm64"), dev=True)
    assert indexes(plan) == [None] and plan.torch[0].args == (SPEC,)
    assert plan.extras == ("ndi", "midi", "syphon", "dev")
    assert "MPS" in plan.reasons[0]
    assert plan.requirement() == ".[ndi,midi,syphon,dev]"


def test_an_intel_mac_is_told_plainly_that_torch_has_no_build_for_it():
    with pytest.raises(install.PlanError, match="Intel Macs"):
        install.decide(Facts("Darwin", "x86_64"))
    # ...unless the user names a torch themselves.
    assert install.decide(Facts("Darwin", "x86_64"), "torch==2.2.2").torch[0].args == ("torch==2.2.2",)


def test_linux_cpu_tries_the_cpu_index_then_the_default_index():
    plan = install.decide(Facts("Linux", "x86_64", (), None, "nvidia-smi is not on PATH"), dev=True)
    assert indexes(plan) == ["https://download.pytorch.org/whl/cpu", None]
    assert all(s.args == (SPEC,) for s in plan.torch)
    assert "several GB" in plan.torch[1].what  # the fallback says what it costs
    assert plan.extras == ("ndi", "midi", "dev")


def test_linux_with_nvidia_tries_the_cuda_index_then_pypi_whose_linux_build_uses_cuda():
    plan = install.decide(Facts("Linux", "x86_64", H200, (13, 0)))
    assert indexes(plan) == ["https://download.pytorch.org/whl/cu130", None]
    assert plan.extras == ("ndi", "midi")
    assert "H200" in plan.reasons[0]


def test_a_driver_too_old_for_any_cuda_build_gets_the_cpu_build_and_the_fix():
    plan = install.decide(Facts("Linux", "x86_64", ("Tesla K80",), (11, 4)))
    assert indexes(plan) == ["https://download.pytorch.org/whl/cpu", None]
    assert "update the driver" in plan.reasons[0]


def test_the_environment_override_wins_and_passes_pip_options_through():
    plan = install.decide(Facts("Linux", "x86_64"), "torch==2.13.0 --index-url https://example.invalid/cu126")
    assert len(plan.torch) == 1
    assert plan.torch[0].args == ("torch==2.13.0", "--index-url", "https://example.invalid/cu126")
    assert "STREAMVJ_TORCH" in plan.reasons[0]


@pytest.mark.skipif(tomllib is None, reason="tomllib is Python 3.11+")
def test_every_extra_the_installer_names_exists_in_pyproject():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = set(install.BASE_EXTRAS) | {"dev"}.union(*install.PLATFORM_EXTRAS.values())
    assert named <= set(declared), f"not in pyproject.toml: {named - set(declared)}"


NVIDIA_SMI_Q = """
==============NVSMI LOG==============

Timestamp                                 : Tue Jun  3 10:00:00 2025
Driver Version                            : 570.124.06
CUDA Version                              : 12.8

Attached GPUs                             : 2
GPU 00000000:01:00.0
    Product Name                          : NVIDIA GeForce RTX 4090
    Product Brand                         : GeForce
GPU 00000000:02:00.0
    Product Name                          : NVIDIA RTX A6000
"""


def test_nvidia_smi_output_is_parsed_into_names_and_the_driver_cuda_version():
    assert install.parse_nvidia_smi(NVIDIA_SMI_Q) == (("NVIDIA GeForce RTX 4090", "NVIDIA RTX A6000"), (12, 8))
    assert install.parse_nvidia_smi("No devices were found") == ((), None)


@pytest.mark.parametrize(("installed", "first_index", "keep"), [
    (None, "https://download.pytorch.org/whl/cpu", False),
    ("2.12.0+cpu", "https://download.pytorch.org/whl/cpu", False),
    ("2.13.0+cpu", "https://download.pytorch.org/whl/cpu", True),
    ("2.13.0", "https://download.pytorch.org/whl/cpu", True),  # an earlier fallback: not downloaded again
    ("2.13.0+cu126", "https://download.pytorch.org/whl/cpu", False),
    ("2.13.0+cpu", "https://download.pytorch.org/whl/cu130", False),  # a GPU arrived since
    ("2.13.0+cu126", "https://download.pytorch.org/whl/cu130", True),
    ("2.13.0+cpu", None, True),
])
def test_a_rerun_keeps_the_torch_the_plan_would_install(installed, first_index, keep):
    plan = install.Plan((install.TorchSource((SPEC,), first_index, "x"),), (), ())
    assert install.torch_satisfies(installed, plan) is keep


class FakePip:
    """Records pip commands; fails those whose arguments contain `fail_on`."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    def __call__(self, cmd: list, dry_run: bool) -> int:
        self.calls.append([str(c) for c in cmd])
        return 1 if self.fail_on and self.fail_on in self.calls[-1] else 0


@pytest.fixture
def no_torch(monkeypatch):
    monkeypatch.setattr(install, "installed_torch", lambda py: None)


def linux_cpu_plan():
    return install.decide(Facts("Linux", "x86_64"))


def test_an_unreachable_cpu_index_falls_back_to_the_default_index_without_calling_pip_on_it(monkeypatch, no_torch):
    pip, probed = FakePip(), []
    monkeypatch.setattr(install, "run", pip)
    monkeypatch.setattr(install, "index_unreachable", lambda url: probed.append(url) or "Name or service not known")
    assert install.install_torch(Path("py"), linux_cpu_plan(), override=False, dry_run=False)
    assert probed == ["https://download.pytorch.org/whl/cpu"]
    assert pip.calls == [["py", "-m", "pip", "install", "-q", SPEC]]


def test_a_reachable_index_that_fails_falls_back_too(monkeypatch, no_torch):
    pip = FakePip(fail_on="--index-url")
    monkeypatch.setattr(install, "run", pip)
    monkeypatch.setattr(install, "index_unreachable", lambda url: None)
    assert install.install_torch(Path("py"), linux_cpu_plan(), override=False, dry_run=False)
    assert [c[-1] for c in pip.calls] == ["30", SPEC]
    assert "--retries" in pip.calls[0]  # pip gives up fast on that index


def test_windows_cuda_with_its_index_unreachable_fails_rather_than_installing_a_cpu_torch(monkeypatch, no_torch):
    pip = FakePip()
    monkeypatch.setattr(install, "run", pip)
    monkeypatch.setattr(install, "index_unreachable", lambda url: "timed out")
    plan = install.decide(Facts("Windows", "AMD64", ("NVIDIA GeForce RTX 4090",), (13, 0)))
    assert not install.install_torch(Path("py"), plan, override=False, dry_run=False)
    assert pip.calls == []


def test_the_override_always_runs_pip_even_when_torch_is_installed(monkeypatch):
    pip = FakePip()
    monkeypatch.setattr(install, "run", pip)
    monkeypatch.setattr(install, "installed_torch", lambda py: "2.13.0+cpu")
    plan = install.decide(Facts("Linux", "x86_64"), "torch==2.13.0")
    assert install.install_torch(Path("py"), plan, override=True, dry_run=False)
    assert pip.calls == [["py", "-m", "pip", "install", "-q", "torch==2.13.0"]]


def test_an_installed_matching_torch_is_kept_without_probing_or_pip(monkeypatch):
    pip = FakePip()
    monkeypatch.setattr(install, "run", pip)
    monkeypatch.setattr(install, "installed_torch", lambda py: "2.13.0+cpu")
    monkeypatch.setattr(install, "index_unreachable", lambda url: pytest.fail("probed although torch is there"))
    assert install.install_torch(Path("py"), linux_cpu_plan(), override=False, dry_run=False)
    assert pip.calls == []


def test_the_probe_reports_a_refused_connection_and_accepts_a_live_index():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert install.index_unreachable(f"http://127.0.0.1:{closed}/whl/cpu", timeout=5)

    class Index(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200 if self.path == "/whl/cpu/torch/" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        assert install.index_unreachable(f"http://127.0.0.1:{port}/whl/cpu") is None
        assert install.index_unreachable(f"http://127.0.0.1:{port}/whl/nope") == "HTTP 404"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_dry_run_prints_the_plan_and_commands_and_changes_nothing(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(install, "gather_facts", lambda: Facts("Linux", "x86_64", (), None, "faked"))
    monkeypatch.setattr(install, "index_unreachable", lambda url: "faked: offline")
    monkeypatch.delenv("STREAMVJ_TORCH", raising=False)
    venv = tmp_path / "venv"
    assert install.main(["--dry-run", "--dev", "--venv", str(venv)]) == 0
    out = capsys.readouterr().out
    assert not venv.exists()
    assert "no NVIDIA GPU was found (faked)" in out
    assert "cannot reach https://download.pytorch.org/whl/cpu (faked: offline)" in out
    assert f"-m pip install -q {SPEC}\n" in out
    assert "'.[ndi,midi,dev]'" in out
    assert "-m pip install -q --no-deps streamdiffusion==0.1.1" in out  # the GPU check's reference, last


def test_only_dev_installs_the_reference_streamdiffusion_without_its_pins():
    facts = Facts("Linux", "x86_64", (), None, "faked")
    assert install.decide(facts, dev=True).no_deps == ("streamdiffusion==0.1.1",)
    assert install.decide(facts).no_deps == ()
    assert install.decide(facts, "torch==2.13.0", dev=True).no_deps == ("streamdiffusion==0.1.1",)


@pytest.mark.parametrize(("system", "fix"), [
    ("Windows", "py -3.12 scripts\\install.py"),  # what docs/windows.md tells Windows users to run
    ("Linux", "python3.12 scripts/install.py"),
    ("Darwin", "python3.12 scripts/install.py"),
])
def test_a_python_newer_than_every_prebuilt_extra_is_told_what_it_costs(system, fix):
    machine = "arm64" if system == "Darwin" else "x86_64"
    newer = install.decide(Facts(system, machine, python=(3, 13)))
    note = [r for r in newer.reasons if r.startswith("note: Python 3.13")]
    assert len(note) == 1 and "python-rtmidi" in note[0] and fix in note[0] and install.COMPILER[system] in note[0]
    assert not [r for r in install.decide(Facts(system, machine, python=(3, 12))).reasons if r.startswith("note")]


def test_gather_facts_records_this_python(monkeypatch):
    monkeypatch.setattr(install.shutil, "which", lambda name: None)
    assert install.gather_facts().python == tuple(sys.version_info[:2])


def test_a_cpu_torch_is_replaced_once_the_gpu_build_is_wanted(monkeypatch):
    """A rerun after the NVIDIA driver went in: pip would keep 2.13.0+cpu for torch==2.13.0
    (local labels do not count in ==), so the installer removes it before installing the CUDA build."""
    pip = FakePip()
    monkeypatch.setattr(install, "run", pip)
    monkeypatch.setattr(install, "installed_torch", lambda py: "2.13.0+cpu")
    monkeypatch.setattr(install, "index_unreachable", lambda url: None)
    plan = install.decide(Facts("Windows", "AMD64", ("NVIDIA GeForce RTX 4090",), (12, 8)))
    assert install.install_torch(Path("py"), plan, override=False, dry_run=False)
    assert pip.calls[0] == ["py", "-m", "pip", "uninstall", "-q", "-y", "torch"]
    assert pip.calls[1][:5] == ["py", "-m", "pip", "install", "-q"] and "https://download.pytorch.org/whl/cu126" in pip.calls[1]
    assert len(pip.calls) == 2


def test_an_installed_torch_stays_when_the_wanted_index_is_unreachable(monkeypatch):
    pip = FakePip()
    monkeypatch.setattr(install, "run", pip)
    monkeypatch.setattr(install, "installed_torch", lambda py: "2.13.0+cpu")
    monkeypatch.setattr(install, "index_unreachable", lambda url: "timed out")
    plan = install.decide(Facts("Windows", "AMD64", ("NVIDIA GeForce RTX 4090",), (12, 8)))
    assert not install.install_torch(Path("py"), plan, override=False, dry_run=False)
    assert pip.calls == []  # nothing removed: the CPU build still runs


def test_a_windows_override_keeps_its_backslashes():
    wheel = r"C:\wheels\torch-2.13.0+cu126-cp312-cp312-win_amd64.whl"
    plan = install.decide(Facts("Windows", "AMD64"), f"{wheel} --force-reinstall")
    assert plan.torch[0].args == (wheel, "--force-reinstall")
    spaced = install.decide(Facts("Windows", "AMD64"), r'"C:\My wheels\torch.whl" --no-deps')
    assert spaced.torch[0].args == (r"C:\My wheels\torch.whl", "--no-deps")
    posix = install.decide(Facts("Linux", "x86_64"), "'/opt/my wheels/torch.whl' --no-deps")
    assert posix.torch[0].args == ("/opt/my wheels/torch.whl", "--no-deps")
