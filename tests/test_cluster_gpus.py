"""The right GPU on a cluster, clock control without root, restore that works on clusters, GPU SKUs (issue 12).

NVML is a small fake of a SLURM node written here (``FakeNode``): a job's cgroup shows only the job's
GPUs, renumbered from 0, each with a UUID and a PCI bus id, optionally in MIG mode, and every clock
call is logged with the handle it went to, so a test can say which physical GPU was locked.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, SMI_CAPTURES

from profiling import clocks
from profiling.backends import (
    GpuNotVisible,
    job_gpu_positions,
    open_backend,
    open_by_uuid,
    open_job_gpu,
    probe,
    visibility,
)
from profiling.backends.simulated import SimulatedGpu
from profiling.backends.visibility import VisibleGpu, parse_smi_list, select_gpu
from profiling.config import SweepConfig
from profiling.driver import execute
from profiling.errors import GpuNotFoundError
from profiling.launch import main as launch_main
from profiling.smi_parse import parse_supported_clocks
from sd_energy_contract import gpus
from sd_energy_contract.errors import InputError

FAKE_APP = str(REPO / "tests" / "data" / "fake_app.py")
H100_CLOCKS = [1980, 1755, 1410, 1005, 705]


# --------------------------------------------------------------------------- a fake SLURM node's NVML

class FakeNode:
    """NVML as a job on a SLURM node sees it: ``seen`` lists the node's GPU numbers the job's cgroup
    shows (NVML renumbers them from 0). ``mig`` maps a node GPU number to its MIG devices' UUIDs."""

    def __init__(self, node_gpus: int = 4, seen: list[int] | None = None, mig: dict[int, list[str]] | None = None,
                 root: bool = True, app_clocks_allowed: bool = True):
        self.seen = list(range(node_gpus)) if seen is None else seen
        self.mig = mig or {}
        self.root, self.app_clocks_allowed = root, app_clocks_allowed
        self.locked: dict[int, int | None] = {}
        self.app: dict[int, int | None] = {}
        self.calls: list[tuple[str, int, tuple]] = []
        self.energy_mj = 1_000_000

    def module(self) -> types.ModuleType:
        nv = types.ModuleType("pynvml")

        class NVMLError(Exception):
            pass

        for name in ("NoPermission", "NotSupported", "LibraryNotFound", "DriverNotLoaded", "NotFound"):
            setattr(nv, f"NVMLError_{name}", type(f"NVMLError_{name}", (NVMLError,), {}))
        nv.NVMLError = NVMLError
        nv.NVML_CLOCK_GRAPHICS, nv.NVML_CLOCK_SM, nv.NVML_CLOCK_MEM, nv.NVML_TEMPERATURE_GPU = 0, 1, 2, 0
        node = self

        def gpu(handle):  # a job handle -> the node's GPU number
            return node.seen[int(handle[1:])]

        def log(name, handle, *args):
            node.calls.append((name, gpu(handle), args))

        def set_locked(h, lo, hi):
            log("lock", h, lo)
            if not node.root:
                raise nv.NVMLError_NoPermission()
            node.locked[gpu(h)] = lo

        def set_app(h, mem, sm):
            log("app", h, sm)
            if not node.app_clocks_allowed:
                raise nv.NVMLError_NoPermission()
            node.app[gpu(h)] = sm

        def reset_locked(h):
            log("reset", h)
            node.locked[gpu(h)] = None

        def reset_app(h):
            node.app[gpu(h)] = None

        def clock(h, kind):
            if kind == nv.NVML_CLOCK_MEM:
                return 2619
            return node.locked.get(gpu(h)) or node.app.get(gpu(h)) or H100_CLOCKS[0]

        def energy(h):
            node.energy_mj += 12_500
            return node.energy_mj

        def mig_handle(h, j):
            migs = node.mig.get(gpu(h), [])
            if j >= len(migs):
                raise nv.NVMLError_NotFound()
            return f"m{gpu(h)}-{j}"

        def uuid(h):
            if h.startswith("m"):
                g, j = map(int, h[1:].split("-"))
                return node.mig[g][j]
            return f"GPU-node{gpu(h)}"

        funcs = {
            "nvmlInit": lambda: None, "nvmlShutdown": lambda: None,
            "nvmlDeviceGetCount": lambda: len(node.seen),
            "nvmlDeviceGetHandleByIndex": lambda i: f"h{i}",
            "nvmlDeviceGetName": lambda h: b"NVIDIA H100 80GB HBM3",
            "nvmlDeviceGetUUID": uuid,
            "nvmlDeviceGetPciInfo": lambda h: types.SimpleNamespace(busId=f"00000000:{0x41 + 0x20 * gpu(h):02X}:00.0"),
            "nvmlDeviceGetMigMode": lambda h: (1, 1) if gpu(h) in node.mig else (0, 0),
            "nvmlDeviceGetMaxMigDeviceCount": lambda h: 7,
            "nvmlDeviceGetMigDeviceHandleByIndex": mig_handle,
            "nvmlSystemGetDriverVersion": lambda: "570.124.06",
            "nvmlDeviceGetSupportedMemoryClocks": lambda h: [2619],
            "nvmlDeviceGetSupportedGraphicsClocks": lambda h, m: list(H100_CLOCKS),
            "nvmlDeviceSetGpuLockedClocks": set_locked, "nvmlDeviceSetApplicationsClocks": set_app,
            "nvmlDeviceResetGpuLockedClocks": reset_locked, "nvmlDeviceResetApplicationsClocks": reset_app,
            "nvmlDeviceGetApplicationsClock": lambda h, kind: node.app.get(gpu(h)) or H100_CLOCKS[0],
            "nvmlDeviceGetClockInfo": clock, "nvmlDeviceGetTotalEnergyConsumption": energy,
            "nvmlDeviceGetPowerUsage": lambda h: 250_000,
            "nvmlDeviceGetUtilizationRates": lambda h: types.SimpleNamespace(gpu=97, memory=40),
            "nvmlDeviceGetMemoryInfo": lambda h: types.SimpleNamespace(used=10 * 2**30, total=80 * 2**30),
            "nvmlDeviceGetTemperature": lambda h, k: 55,
        }
        for name, fn in funcs.items():
            setattr(nv, name, fn)
        return nv

    def gpus_touched(self, what: str) -> set[int]:
        return {g for name, g, _ in self.calls if name == what}


@pytest.fixture
def node(monkeypatch):
    """Install a FakeNode as ``pynvml``; the job's environment starts without SLURM or CUDA variables."""
    for var in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        monkeypatch.delenv(var, raising=False)

    def install(**kw) -> FakeNode:
        fake = FakeNode(**kw)
        monkeypatch.setitem(sys.modules, "pynvml", fake.module())
        return fake
    return install


def one_run(out: Path, **kw) -> SweepConfig:
    base = dict(profiling_tool="nvml", profiling_mode="custom", custom_frequencies="1410", num_runs=1,
                sleep_interval=0.0, idle_seconds=0.0, sampling_interval=10.0, app_executable=FAKE_APP,
                app_params="ok 0.05", output_dir=str(out))
    return SweepConfig(**{**base, **kw})


def results(out: Path) -> tuple[pd.DataFrame, dict, dict]:
    rows = pd.read_csv(out / "runs.csv")
    app = json.loads(next((out / "apps").glob("*.json")).read_text())
    return rows, json.loads((out / "manifest.json").read_text()), app


# --------------------------------------------------------------------------- the right GPU

def test_a_slurm_job_whose_numbers_differ_from_nvml_measures_and_locks_the_gpu_the_app_ran_on(node, tmp_path,
                                                                                            monkeypatch):
    fake = node(seen=[2, 3])  # the job's cgroup shows node GPUs 2 and 3, as NVML indices 0 and 1
    monkeypatch.setenv("SLURM_JOB_GPUS", "2,3")
    monkeypatch.setenv("SLURM_STEP_GPUS", "2,3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # the node's numbers (no ConstrainDevices on the task plugin)
    out = tmp_path / "res"
    assert execute(one_run(out, gpu_index=1), log=lambda *a, **k: None) == 0
    rows, manifest, app = results(out)
    assert set(rows["gpu_uuid"]) == {"GPU-node3"} and list(rows["status"]) == ["ok"]
    assert app["env"]["CUDA_VISIBLE_DEVICES"] == "GPU-node3"  # the app ran on exactly the GPU measured
    assert app["env"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert fake.gpus_touched("lock") == {3} and fake.locked[3] is None  # locked there only, and restored
    sel = manifest["gpu_selection"]
    assert sel["uuid"] == "GPU-node3" and sel["index"] == 1 and sel["pci_bus_id"] == "00000000:A1:00.0"
    assert "node's GPU 3" in sel["how"] and manifest["slurm"]["SLURM_STEP_GPUS"] == "2,3"


def test_without_a_cgroup_the_job_numbers_index_nvml_directly(node):
    node(seen=[0, 1, 2, 3])
    visible = visibility.enumerate_nvml()
    assert [g.uuid for g in visible] == ["GPU-node0", "GPU-node1", "GPU-node2", "GPU-node3"]
    sel = select_gpu(visible, 1, "2,3")
    assert sel.gpu.uuid == "GPU-node3" and sel.gpu.index == 3
    assert select_gpu(visible, None, None).gpu.uuid == "GPU-node0"  # unset: NVML index 0, never SLURM's number


@pytest.mark.parametrize("cuda, position, uuid", [
    ("GPU-node2", 0, "GPU-node2"),          # a full UUID
    ("GPU-node3,GPU-node2", 1, "GPU-node2"),  # the job's order, not PCI order
    ("1,0", 0, "GPU-node1"),                # local indices inside a cgroup
])
def test_cuda_visible_devices_is_followed_by_uuid_or_index(cuda, position, uuid):
    visible = [VisibleGpu(i, f"GPU-node{i}") for i in range(4)]
    assert select_gpu(visible, position, cuda).gpu.uuid == uuid


@pytest.mark.parametrize("cuda, position, option, problem", [
    (None, 2, "--gpu-index", "this job sees 2 GPU(s)"),
    ("0", 1, "--gpu-index", "gives this job 1 GPU(s)"),
    ("GPU-nope", 0, "CUDA_VISIBLE_DEVICES", "not the UUID of a GPU this job sees"),
    ("7", 0, "CUDA_VISIBLE_DEVICES", "names GPU 7, but this job sees 2 GPU(s)"),
    ("NoDevFiles", 0, "CUDA_VISIBLE_DEVICES", "makes no GPU visible"),
    ("gpu0", 0, "CUDA_VISIBLE_DEVICES", "neither a GPU index"),
])
def test_a_gpu_the_job_cannot_see_is_one_line_naming_the_option(cuda, position, option, problem):
    visible = [VisibleGpu(i, f"GPU-node{i}") for i in range(2)]
    with pytest.raises(InputError) as exc:
        select_gpu(visible, position, cuda)
    assert exc.value.option == option and problem in str(exc.value) and "\n" not in str(exc.value)


def test_the_simulated_gpu_ignores_what_cuda_sees(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-of-a-real-node")
    monkeypatch.setenv("SD_ENERGY_SIMULATED_GPUS", "2")
    backend, sel = open_job_gpu("simulated", 1, "A100", announce=lambda m: None)
    assert backend.uuid() == sel.gpu.uuid == "SIM-A100-1" and "does not apply" in sel.how
    with pytest.raises(InputError, match="--gpu-index 2: this job sees 2 GPU"):
        open_job_gpu("simulated", 2, "A100", announce=lambda m: None)


def test_all_gpus_counts_only_the_gpus_this_job_sees(node, monkeypatch):
    node(seen=[0, 1, 2, 3])
    assert job_gpu_positions("nvml") == [0, 1, 2, 3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert job_gpu_positions("nvml") == [0, 1]
    monkeypatch.setenv("SD_ENERGY_SIMULATED_GPUS", "3")
    assert job_gpu_positions("simulated", "H100") == [0, 1, 2]  # CUDA_VISIBLE_DEVICES does not apply to the twin


def test_nvidia_smi_list_gives_uuids_and_mig_devices():
    text = ("GPU 0: NVIDIA H100 NVL (UUID: GPU-aaaa)\n"
            "GPU 1: NVIDIA H100 NVL (UUID: GPU-bbbb)\n"
            "  MIG 3g.47gb     Device  0: (UUID: MIG-cccc)\n")
    a, b = parse_smi_list(text)
    assert (a.index, a.uuid, a.mig_enabled) == (0, "GPU-aaaa", False)
    assert (b.uuid, b.mig_enabled, b.mig_uuids) == ("GPU-bbbb", True, ("MIG-cccc",))


# --------------------------------------------------------------------------- never the twin on a GPU node

def test_a_gpu_node_without_working_bindings_is_an_error_not_the_simulated_gpu(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("SD_ENERGY_FORCE_SIMULATED", raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py missing: `import pynvml` fails
    monkeypatch.setenv("PATH", str(tmp_path))          # and no nvidia-smi
    driver_file = tmp_path / "version"
    monkeypatch.setattr(visibility, "NVIDIA_DRIVER_FILE", driver_file)
    assert probe() == "simulated"  # no driver here: the twin, with its banner
    driver_file.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.124.06\n")
    with pytest.raises(GpuNotFoundError, match=r"NVIDIA driver is present .*\(nvml: nvidia-ml-py is not installed"):
        probe()
    with pytest.raises(GpuNotFoundError):
        open_backend("auto", 0)
    rc = launch_main(["--profiling-mode", "baseline", "--app-executable", FAKE_APP, "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "error: --profiling-tool auto: an NVIDIA driver is present" in err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- MIG

def test_a_mig_gpu_is_refused_with_the_reason(node, monkeypatch, tmp_path):
    node(seen=[0, 1], mig={1: ["MIG-slice-a", "MIG-slice-b"]})
    visible = visibility.enumerate_nvml()
    with pytest.raises(InputError) as exc:
        select_gpu(visible, 1, None)
    msg = str(exc.value)
    assert exc.value.option == "--gpu-index" and "MIG mode" in msg and "whole-GPU" in msg
    assert "--allow-mig-whole-gpu" in msg
    with pytest.raises(InputError) as exc:
        select_gpu(visible, 0, "MIG-slice-b")
    assert exc.value.option == "CUDA_VISIBLE_DEVICES" and "MIG slice of GPU GPU-node1" in str(exc.value)
    assert select_gpu(visible, 0, None).mig == "off"


def test_allow_mig_whole_gpu_measures_the_whole_gpu_and_every_row_says_so(node, monkeypatch, tmp_path):
    fake = node(seen=[0, 1], mig={1: ["MIG-slice-a", "MIG-slice-b"]})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-slice-b")
    out = tmp_path / "res"
    cfg = one_run(out, allow_mig_whole_gpu=True, num_runs=2)
    assert execute(cfg, log=lambda *a, **k: None) == 0
    rows, manifest, app = results(out)
    assert list(rows["mig"]) == [1, 1] and set(rows["gpu_uuid"]) == {"GPU-node1"}
    assert manifest["gpu_selection"]["mig"] == "whole-gpu" and manifest["gpu_selection"]["mig_device"] == "MIG-slice-b"
    assert app["env"]["CUDA_VISIBLE_DEVICES"] == "MIG-slice-b"  # CUDA runs on MIG devices only while MIG is on
    assert fake.gpus_touched("lock") == {1}


# --------------------------------------------------------------------------- clock control

def test_application_mode_never_locks_clocks(node, tmp_path):
    fake = node(seen=[0])
    out = tmp_path / "res"
    assert execute(one_run(out, clock_control="application"), log=lambda *a, **k: None) == 0
    rows, manifest, _ = results(out)
    assert list(rows["clock_method"]) == ["application"] and manifest["clock_control"] == "application"
    assert not fake.gpus_touched("lock") and fake.gpus_touched("app") == {0} and fake.app[0] is None  # reset after


def test_a_non_root_user_falls_back_to_application_clocks_and_the_rows_say_so(node, tmp_path):
    node(seen=[0], root=False)
    out = tmp_path / "res"
    assert execute(one_run(out), log=lambda *a, **k: None) == 0
    assert list(results(out)[0]["clock_method"]) == ["application"]


def test_slurm_mode_verifies_the_clock_slurm_set_and_never_sets_or_resets_it(tmp_path):
    gpu = SimulatedGpu("H100", 0)
    gpu.lock_sm_clock(1395)  # what `srun --gpu-freq=1395` did before the launcher started
    out = tmp_path / "res"
    cfg = one_run(out, profiling_tool="simulated", gpu_type="H100", custom_frequencies="1395", clock_control="slurm",
                  num_runs=2)
    assert execute(cfg, log=lambda *a, **k: None) == 0
    rows, manifest, _ = results(out)
    assert list(rows["clock_method"]) == ["slurm-verified"] * 2 and manifest["clock_control"] == "slurm"
    assert gpu.locked_sm_clock_mhz() == 1395  # SLURM's setting stays: SLURM resets it at the step's end
    assert not list(clocks.lock_dir().glob("*.json"))  # nothing was set, so nothing to restore later


def test_slurm_mode_refuses_a_clock_slurm_did_not_set(tmp_path):
    SimulatedGpu("H100", 0).lock_sm_clock(1590)
    cfg = one_run(tmp_path / "res", profiling_tool="simulated", gpu_type="H100", custom_frequencies="1395",
                  clock_control="slurm")
    with pytest.raises(InputError, match=r"--clock-control slurm: the GPU's SM clock is 1590 MHz, not this run's "
                                         r"1395 MHz .*srun --gpu-freq=1395"):
        execute(cfg, log=lambda *a, **k: None)


def test_slurm_mode_reads_the_application_clock_through_nvml(node):
    fake = node(seen=[0])
    fake.app[0] = 1410  # SLURM's --gpu-freq sets application clocks
    backend = open_backend("nvml", 0)
    with clocks.ClockGuard(backend, "H100", "slurm") as guard:
        guard.lock(1410)
        assert guard.method == backend.clock_method == "slurm-verified"
        with pytest.raises(InputError, match="application clock is 1410 MHz, not this run's 1005 MHz"):
            guard.lock(1005)
    assert fake.app[0] == 1410 and not fake.gpus_touched("lock") and not fake.gpus_touched("reset")


@pytest.mark.parametrize("kw, problem", [
    (dict(profiling_mode="custom", custom_frequencies="1785,1395", app_executable=FAKE_APP),
     "SLURM sets one clock per job step"),
    (dict(profiling_mode="guided", app_executable=FAKE_APP), "not with --profiling-mode guided"),
    (dict(in_process=True, phase_clocks="denoise=1395"), "not with --phase-clocks"),
])
def test_slurm_mode_refuses_what_would_move_the_clock_during_a_launch(tmp_path, kw, problem):
    cfg = SweepConfig(profiling_tool="simulated", gpu_type="H100", clock_control="slurm", num_runs=1,
                      output_dir=str(tmp_path / "r"), **kw)
    with pytest.raises(InputError) as exc:
        execute(cfg, log=lambda *a, **k: None)
    assert exc.value.option == "--clock-control" and problem in str(exc.value)
    assert not (tmp_path / "r").exists()


def test_one_clock_step_is_what_the_gpu_lists():
    assert clocks.clock_step_mhz(gpus.load_gpu_specs()["V100"]["sm_clocks_mhz"], 1380) == 8
    assert clocks.clock_step_mhz(gpus.load_gpu_specs()["H100"]["sm_clocks_mhz"], 1410) == 15


# --------------------------------------------------------------------------- restore that works on clusters

def test_the_lock_directory_is_host_wide_and_survives_the_job(monkeypatch, tmp_path):
    monkeypatch.delenv("SD_ENERGY_LOCK_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run-user"))  # a login node's, copied into the job
    var_tmp, shm = tmp_path / "var-tmp", tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setattr(clocks, "LOCK_BASES", (var_tmp, shm))
    assert clocks.lock_dir() == shm / f"sd-energy-{os.getuid()}"  # /var/tmp missing here: /dev/shm
    var_tmp.mkdir()
    assert clocks.lock_dir() == var_tmp / f"sd-energy-{os.getuid()}"
    assert stat.S_IMODE(clocks.lock_dir().stat().st_mode) == 0o700
    assert shm / f"sd-energy-{os.getuid()}" in clocks.lock_dirs()  # records written under the fallback are found
    assert not (tmp_path / "run-user").exists()


def _stale_record(directory: Path, uuid: str, index: int, backend: str = "nvml", gpu_type: str = "H100") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{uuid}.json"
    path.write_text(json.dumps({"backend": backend, "gpu_uuid": uuid, "gpu_index": index, "gpu_type": gpu_type,
                                "pid": 2**22 + 11, "host": socket.gethostname(), "sm_clock_mhz": 1005}))
    return path


def test_a_record_is_restored_by_uuid_wherever_this_job_numbers_that_gpu(node):
    fake = node(seen=[2, 3])
    fake.locked[3] = 1005  # a killed launcher left node GPU 3 locked; it was NVML index 3 in that job
    path = _stale_record(clocks.lock_dir(), "GPU-node3", index=3)
    lines: list[str] = []
    restored = clocks.restore_stale(log=lines.append)
    assert [r["gpu_uuid"] for r in restored] == ["GPU-node3"] and fake.locked[3] is None
    assert fake.gpus_touched("reset") == {3} and not path.exists()


def test_a_record_for_a_gpu_this_job_cannot_see_is_kept_for_a_later_job(node, tmp_path):
    node(seen=[0])
    path = _stale_record(clocks.lock_dir(), "GPU-node3", index=0)
    lines: list[str] = []
    assert clocks.restore_stale(log=lines.append) == []
    assert path.exists() and not path.with_name(path.name + ".bad").exists()
    assert len(lines) == 1 and "not visible to this job; kept for a later job that can see it" in lines[0]
    with pytest.raises(GpuNotVisible):
        open_by_uuid("nvml", "GPU-node3")
    out = tmp_path / "res"
    assert execute(one_run(out), log=lambda *a, **k: None) == 0  # the launch goes on


def test_a_record_left_where_an_older_version_wrote_it_is_still_restored(monkeypatch, tmp_path):
    monkeypatch.delenv("SD_ENERGY_LOCK_DIR")
    monkeypatch.setattr(clocks, "LOCK_BASES", (tmp_path / "var-tmp",))
    (tmp_path / "var-tmp").mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    gpu = SimulatedGpu("A100", 0)
    gpu.lock_sm_clock(1005)
    _stale_record(tmp_path / "xdg" / f"sd-energy-locks-{os.getuid()}", gpu.uuid(), 0, backend="simulated",
                  gpu_type="A100")
    lines: list[str] = []
    restored = clocks.restore_stale(log=lines.append)
    assert [r["gpu_uuid"] for r in restored] == ["SIM-A100-0"] and gpu.locked_sm_clock_mhz() is None, lines


def test_the_epilog_resets_the_jobs_gpus(tmp_path):
    script = REPO / "slurm" / "epilog-reset-clocks.sh"
    log = tmp_path / "smi.log"
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n")
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "SLURM_JOB_GPUS": "2,3"}
    assert subprocess.run(["bash", str(script)], env=env, timeout=30).returncode == 0
    assert log.read_text().splitlines() == ["-i 2,3 -rgc", "-i 2,3 -rac"]
    assert subprocess.run(["bash", str(script)], env={"PATH": env["PATH"]}, timeout=30).returncode == 0  # no GPUs


# --------------------------------------------------------------------------- GPU SKUs

SKUS = gpus.gpu_skus()


@pytest.mark.parametrize("sku", sorted(SKUS))
def test_every_sku_names_its_sources_and_its_model(sku):
    spec = SKUS[sku]
    sensors = gpus._read(None)["sensors"]
    assert spec["arch"] in sensors and spec["family"] in gpus.families()
    assert set(spec["simulated"]) == {"idle_w", "mem_w", "core_dynamic_w", "v_min_frac", "compute_bound_frac"}
    assert all(spec[k] for k in ("source", "source_tdp", "source_peak"))
    clocks_ = spec["sm_clocks_mhz"]
    assert clocks_ == sorted(set(clocks_), reverse=True)
    assert clocks_[0] == spec["sm_clock_max_mhz"] and clocks_[-1] == spec["sm_clock_min_mhz"]
    assert gpus.detect_gpu_sku(spec["name"]) == sku  # the name the simulated GPU shows picks it again
    m = spec["simulated"]
    assert m["idle_w"] + m["mem_w"] + m["core_dynamic_w"] < spec["tdp_w"]
    assert spec["source"].startswith("real capture") or "derived, not read from a device" in spec["source"]


@pytest.mark.parametrize("sku, capture", [("V100-PCIE", "V100"), ("A100-PCIE", "A100"), ("H100-NVL", "H100")])
def test_the_real_captures_are_the_default_skus_clock_lists(sku, capture):
    parsed = next(iter(parse_supported_clocks((SMI_CAPTURES / f"supported_clocks_{capture}.txt").read_text()).values()))
    assert SKUS[sku]["sm_clocks_mhz"] == parsed[SKUS[sku]["memory_clock_mhz"]]
    assert gpus.families()[capture] == sku


@pytest.mark.parametrize("sku, max_mhz, tdp_w", [
    ("V100-SXM2", 1530, 300), ("A100-SXM4", 1410, 400), ("H100-SXM5", 1980, 700), ("H100-PCIE", 1755, 350),
    ("H100-NVL", 1785, 400), ("H200-SXM", 1980, 700), ("H200-NVL", 1785, 600),
])
def test_datasheet_maxima_and_tdps(sku, max_mhz, tdp_w):
    assert SKUS[sku]["sm_clock_max_mhz"] == max_mhz and gpus.gpu_tdp_w(sku) == tdp_w


@pytest.mark.parametrize("name, sku, family", [
    ("NVIDIA H100 80GB HBM3", "H100-SXM5", "H100"), ("NVIDIA H100 NVL", "H100-NVL", "H100"),
    ("NVIDIA H100 PCIe", "H100-PCIE", "H100"), ("Tesla V100-SXM2-32GB", "V100-SXM2", "V100"),
    ("Tesla V100-PCIE-32GB", "V100-PCIE", "V100"), ("NVIDIA A100-SXM4-80GB", "A100-SXM4", "A100"),
    ("A100-PCIE-40GB", "A100-PCIE", "A100"), ("NVIDIA H200", "H200-SXM", "H200"), ("NVIDIA H200 NVL", "H200-NVL", "H200"),
    ("Tesla V100S-PCIE-32GB", None, "V100"),  # a SKU the file does not list: its family, and no SKU claimed
])
def test_the_device_name_picks_the_sku(name, sku, family):
    assert gpus.detect_gpu_sku(name) == sku and gpus.detect_gpu_type(name) == family


def test_a_family_name_keeps_working_and_says_which_sku_it_means():
    specs = gpus.load_gpu_specs()
    assert specs["H100"]["sku"] == "H100-NVL" and specs["V100"]["sku"] == "V100-PCIE"
    assert gpus.sensor_model("H100") == gpus.sensor_model("H100-SXM5") and gpus.sensor_model("H100")
    ident = gpus.identify_gpu("NVIDIA H100 NVL (simulated)", "H100", measured=False)
    assert (ident.family, ident.sku) == ("H100", "H100-NVL") and "H100 means the H100-NVL" in ident.note
    real = gpus.identify_gpu("NVIDIA H100 80GB HBM3", "H100")
    assert (real.family, real.sku) == ("H100", "H100-SXM5")  # on a real GPU the device name picks the SKU
    with pytest.raises(InputError, match="--gpu-type H100-NVL: but the GPU is a NVIDIA H100 80GB HBM3 .H100-SXM5."):
        gpus.identify_gpu("NVIDIA H100 80GB HBM3", "H100-NVL")
    with pytest.raises(InputError, match="--gpu-type A100: but the GPU is"):
        gpus.identify_gpu("NVIDIA H100 80GB HBM3", "A100")


def test_a_real_gpu_rows_carry_the_family_and_the_detected_sku(node, tmp_path):
    node(seen=[0])
    out = tmp_path / "res"
    assert execute(one_run(out, gpu_type="H100"), log=lambda *a, **k: None) == 0
    rows, manifest, _ = results(out)
    assert list(rows["gpu_type"]) == ["H100"] and list(rows["gpu_sku"]) == ["H100-SXM5"]
    assert manifest["gpu_sku"] == "H100-SXM5" and "detected from the device name" in manifest["gpu_sku_note"]


def test_a_simulated_sku_has_its_own_clocks_and_rows_keep_the_family(tmp_path):
    out = tmp_path / "res"
    lines: list[str] = []
    cfg = one_run(out, profiling_tool="simulated", gpu_type="H100-SXM5", custom_frequencies="1980")
    assert execute(cfg, log=lambda m, err=False: lines.append(m)) == 0
    rows, manifest, _ = results(out)
    assert list(rows["gpu_type"]) == ["H100"] and list(rows["gpu_sku"]) == ["H100-SXM5"]
    assert manifest["clocks_mhz"] == [1980] and rows["gpu_uuid"].iloc[0] == "SIM-H100-SXM5-0"
    family = one_run(tmp_path / "fam", profiling_tool="simulated", gpu_type="H100", dry_run=True)
    assert execute(family, log=lambda m, err=False: lines.append(m)) == 0
    assert any("H100 means the H100-NVL here" in line for line in lines)


# --------------------------------------------------------------------------- SLURM sets the clock: one job per clock

def test_per_clock_submission_gives_each_job_its_gpu_freq(tmp_path, monkeypatch, capsys):
    from profiling import slurm

    log = tmp_path / "sbatch.log"
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\necho $$\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(slurm, "SUBMIT_DIR", tmp_path / "submit")  # the rendered script and per-clock experiments
    assert slurm.main(["submit", "H100", "tests/data/experiments/fast.yaml", "--per-clock"]) == 0
    calls = log.read_text().splitlines()
    assert len(calls) == 6 and calls[0].startswith("--parsable --gpu-freq=1785 ")
    assert calls[-1].split()[1] == "--gpu-freq=795" and calls[-1].endswith("fast_f795.yaml")
    one = (tmp_path / "submit" / "fast_f795.yaml").read_text()
    assert "clock_control: slurm" in one and "custom_frequencies: '795'" in one
    assert capsys.readouterr().out.count(" MHz\n") == 6
    with pytest.raises(InputError, match="--per-clock .*not profiling-mode guided"):
        bad = tmp_path / "g.yaml"
        bad.write_text("profiling-mode: guided\napp-executable: tests/data/fake_app.py\n")
        slurm.per_clock_experiments(str(bad), "H100", tmp_path / "pc")


@pytest.mark.parametrize("control", ["lock", "application"])
def test_a_non_root_user_after_acp_0_gets_a_dvfs_sweep_on_application_clocks_of_the_simulated_gpu(
        tmp_path, monkeypatch, control):
    SimulatedGpu("H100", 0).set_api_restriction(False)  # the admin's `nvidia-smi -acp 0`
    monkeypatch.setenv("SD_ENERGY_SIMULATED_USER", "nonroot")
    out = tmp_path / "res"
    cfg = one_run(out, profiling_tool="simulated", gpu_type="H100", custom_frequencies="1785,1395,990",
                  clock_control=control, app_params="ok 0.15")
    assert execute(cfg, log=lambda *a, **k: None) == 0
    rows = pd.read_csv(out / "runs.csv")
    assert list(rows["clock_method"]) == ["application"] * 3
    assert list(rows["sm_clock_mean_mhz"]) == [1785, 1395, 990]  # each clock took effect
    assert SimulatedGpu("H100", 0).application_sm_clock_mhz() is None  # and was reset after


def test_a_non_root_user_without_acp_0_gets_one_line_naming_what_the_admin_can_do(tmp_path, monkeypatch, capsys):
    from profiling import launch

    monkeypatch.setenv("SD_ENERGY_SIMULATED_USER", "nonroot")
    code = launch.main(["--profiling-tool", "simulated", "--gpu-type", "H100", "--profiling-mode", "custom",
                        "--custom-frequencies", "1395", "--num-runs", "1", "--idle-seconds", "0",
                        "--app-executable", FAKE_APP, "--app-params", "ok 0.05", "--output-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --clock-control lock:") and "nvidia-smi -acp 0" in err, err
    assert len(err.strip().splitlines()) == 1


def test_the_window_api_measures_and_locks_the_gpu_cuda_calls_0_not_nvml_index_0(node, monkeypatch, tmp_path):
    from profiling import EnergyMonitor, locked_clock

    fake = node(seen=[0, 1, 2, 3])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-node2")  # torch's cuda:0 is the node's GPU 2
    monkeypatch.setenv("SD_ENERGY_LOCK_DIR", str(tmp_path / "locks"))
    with locked_clock(1410, gpu=0, backend="nvml") as lock:
        assert lock.readback_mhz == 1410 and fake.locked[2] == 1410
    assert fake.gpus_touched("lock") == {2} and fake.locked[2] is None  # locked, then reset
    with EnergyMonitor(gpus=[0], backend="nvml", sampling_interval_s=0.02) as mon:
        assert mon.backends[0].uuid() == "GPU-node2"
        with pytest.raises(InputError, match=r"gpus \[1\]: GPU 1: "):
            EnergyMonitor(gpus=[1], backend="nvml")  # CUDA sees one GPU
