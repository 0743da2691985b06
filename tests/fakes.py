"""A fake ``pynvml`` module: the NVML calls the backend makes, with state, call log and injectable errors."""

from __future__ import annotations

import types


def make_fake_pynvml(sm_clocks=(1980, 1755, 1410, 1005, 705), mem_clocks=(2619,), lock_error=None,
                     energy_supported=True, count=2):
    """GPU ``i`` has handle ``h{i}`` and UUID ``GPU-1234`` (index 0) or ``GPU-1234-{i}``; the calls log
    drops the handle, so tests read ``("nvmlDeviceSetGpuLockedClocks", (1410, 1410))``."""
    nv = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    for name in ("NoPermission", "NotSupported", "LibraryNotFound", "DriverNotLoaded"):
        setattr(nv, f"NVMLError_{name}", type(f"NVMLError_{name}", (NVMLError,), {}))
    nv.NVMLError = NVMLError
    nv.NVML_CLOCK_SM, nv.NVML_CLOCK_MEM, nv.NVML_TEMPERATURE_GPU = 1, 2, 0
    state = {"locked": None, "app": None, "energy_mj": 1_000_000, "calls": [], "power_mw": 250_000}
    nv.state = state

    def log(name):
        def deco(fn):
            def inner(*a):
                handle = a and isinstance(a[0], str) and a[0].startswith("h")
                state["calls"].append((name, a[1:] if handle else a))
                return fn(*a)
            setattr(nv, name, inner)
            return inner
        return deco

    log("nvmlInit")(lambda: None)
    log("nvmlShutdown")(lambda: None)
    log("nvmlDeviceGetCount")(lambda: count)
    log("nvmlDeviceGetHandleByIndex")(lambda i: f"h{i}")
    log("nvmlDeviceGetName")(lambda h: b"NVIDIA H100 80GB HBM3")
    log("nvmlDeviceGetUUID")(lambda h: "GPU-1234" if h == "h0" else f"GPU-1234-{h[1:]}")
    log("nvmlSystemGetDriverVersion")(lambda: "570.124.06")
    log("nvmlDeviceGetSupportedMemoryClocks")(lambda h: list(mem_clocks))
    log("nvmlDeviceGetSupportedGraphicsClocks")(lambda h, m: list(sm_clocks))

    @log("nvmlDeviceSetGpuLockedClocks")
    def _lock(h, lo, hi):
        if lock_error:
            raise getattr(nv, f"NVMLError_{lock_error}")()
        state["locked"] = (lo, hi)

    @log("nvmlDeviceSetApplicationsClocks")
    def _app(h, mem, sm):
        state["app"] = (mem, sm)

    log("nvmlDeviceSetMemoryLockedClocks")(lambda h, lo, hi: state.update(mem_locked=(lo, hi)))
    log("nvmlDeviceResetMemoryLockedClocks")(lambda h: state.update(mem_locked=None))
    log("nvmlDeviceResetGpuLockedClocks")(lambda h: state.update(locked=None))
    log("nvmlDeviceResetApplicationsClocks")(lambda h: state.update(app=None))

    @log("nvmlDeviceGetTotalEnergyConsumption")
    def _energy(h):
        if not energy_supported:
            raise nv.NVMLError_NotSupported()
        state["energy_mj"] += 12_500
        return state["energy_mj"]

    log("nvmlDeviceGetPowerUsage")(lambda h: state["power_mw"])

    @log("nvmlDeviceGetClockInfo")
    def _clock(h, kind):
        if kind == nv.NVML_CLOCK_MEM:
            return mem_clocks[0]
        return (state["locked"] or (None, None))[0] or (state["app"] or (None, sm_clocks[0]))[1]

    log("nvmlDeviceGetUtilizationRates")(lambda h: types.SimpleNamespace(gpu=97, memory=40))
    log("nvmlDeviceGetMemoryInfo")(lambda h: types.SimpleNamespace(used=10 * 2**30, total=80 * 2**30))
    log("nvmlDeviceGetTemperature")(lambda h, k: 55)
    log("nvmlDeviceGetCurrentClocksEventReasons")(lambda h: 0x4)
    return nv
