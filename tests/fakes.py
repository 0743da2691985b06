"""A fake ``pynvml`` module: the NVML calls the backends make, with state, a call log and injectable errors.

By default it is the simple fake the older tests were written against: power is whatever
``state["power_mw"]`` says, and the energy counter advances 12.5 J per read. On request it behaves
like a real node (issue 12):

* ``sensors=True``: each GPU's sensors follow its name's ``sensors:`` entry in ``configs/gpus.yaml``
  (``profiling.backends.simulated.SensorModel``) on ``clock`` (a test's virtual clock, or the
  monotonic one): ``nvmlDeviceGetPowerUsage`` is a 1 s moving average on Hopper names, the field
  ``NVML_FI_DEV_POWER_INSTANT`` is the partly sampled instantaneous reading, and the energy counter
  is the true energy of ``state["power_mw"]`` in 100 ms steps. Every GPU draws ``state["power_mw"]``;
  change it with ``nv.set_power_w(watts)`` (or by assigning: the next call picks it up).
* privileges: ``root=False`` gets NO_PERMISSION for locked clocks, and for application clocks unless
  ``app_clocks_restricted=False`` (the admin ran ``nvidia-smi -acp 0``; root can also call
  ``nvmlDeviceSetAPIRestriction``). ``lock_error="NoPermission"`` is such a non-root user.
* ``state["fail"][name] = n``: the next ``n`` calls of ``name`` raise ``NVMLError_Unknown`` (a
  transient error); ``throttle_masks``: the clock-event reasons over time, ``[(from_s, mask), ...]``
  (seconds since the fake was made); ``event_reasons_api=False``: an older binding with only
  ``nvmlDeviceGetCurrentClocksThrottleReasons``; ``instant_field=False``: a driver without the field.
* a node: ``node`` lists the node's GPUs (``FakeGpu``: UUID, name, PCI bus id, device minor number as
  SLURM numbers it, multiprocessors, MIG instances); ``visible`` the node positions the job's cgroup
  lets it see. NVML enumerates the visible ones in PCI bus order, numbered from 0, as it does inside a
  SLURM job; ``cuda_devices`` says what CUDA would number them.

Handles are ``h{i}`` for NVML index ``i`` and ``h{i}:mig{j}`` for MIG instance ``j``; the call log
drops the handle, so tests read ``("nvmlDeviceSetGpuLockedClocks", (1410, 1410))``.
``state["locked"]``, ``["app"]`` and ``["mem_locked"]`` hold what the last call set on any GPU (the
tests of one GPU read those); ``nv.gpu_state(handle)`` holds each GPU's own.
"""

from __future__ import annotations

import ctypes
import json
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# The real binding's numbers (nvidia-ml-py 13.x), so code written against the fake works on a GPU.
NVML_ERRORS = {"Uninitialized": 1, "InvalidArgument": 2, "NotSupported": 3, "NoPermission": 4, "NotFound": 6,
               "DriverNotLoaded": 9, "Timeout": 10, "LibraryNotFound": 12, "FunctionNotFound": 13, "GpuIsLost": 15,
               "Unknown": 999}
NVML_SUCCESS = 0
NVML_FI_DEV_POWER_AVERAGE, NVML_FI_DEV_POWER_INSTANT = 185, 186
NVML_VALUE_TYPE_UNSIGNED_INT = 1
NVML_RESTRICTED_API_SET_APPLICATION_CLOCKS = 0
FIRST_ENERGY_MJ = 1_000_000  # the counter counts since the driver loaded, not from zero


@dataclass(frozen=True)
class FakeGpu:
    """One GPU of the fake node."""

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    pci_bus_id: str = ""
    minor: int = 0                    # /dev/nvidia<minor>: the number SLURM_JOB_GPUS and the cgroup use
    multiprocessors: int = 132        # CUDA's default order puts the fastest (most SMs) first
    mig_uuids: tuple[str, ...] = ()   # MIG instances; MIG mode is on where there are any


def default_node(count: int) -> list[FakeGpu]:
    """``count`` H100s, UUID ``GPU-1234`` (the first) or ``GPU-1234-{i}``, in PCI order, minor = position."""
    return [FakeGpu("GPU-1234" if i == 0 else f"GPU-1234-{i}", pci_bus_id=f"00000000:{0x18 + 0x10 * i:02X}:00.0",
                    minor=i) for i in range(count)]


def cuda_devices(node: Sequence[FakeGpu], visible: Sequence[int] | None, environ: dict[str, str]) -> list[str]:
    """The UUIDs CUDA numbers 0, 1, ... in a process of the job with ``environ``: the job's GPUs fastest
    first (more multiprocessors first, PCI order among equals) unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``,
    then narrowed by ``CUDA_VISIBLE_DEVICES`` (indices into that order, UUIDs, or MIG UUIDs; CUDA stops
    at the first entry it cannot resolve)."""
    gpus = [node[i] for i in (range(len(node)) if visible is None else visible)]
    gpus.sort(key=lambda g: g.pci_bus_id)
    if environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        gpus.sort(key=lambda g: -g.multiprocessors)
    order = [g.uuid for g in gpus]
    raw = environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return order
    known = set(order) | {m for g in gpus for m in g.mig_uuids}
    out = []
    for item in (x.strip() for x in raw.split(",")):
        if item.isdigit() and int(item) < len(order):
            out.append(order[int(item)])
        elif item in known:
            out.append(item)
        else:
            break
    return out


def make_fake_pynvml(sm_clocks=(1980, 1755, 1410, 1005, 705), mem_clocks=(2619,), lock_error=None,
                     energy_supported=True, count=2, *, sensors: bool = False,
                     clock: Callable[[], float] = time.monotonic, root: bool = True,
                     app_clocks_restricted: bool = True, instant_field: bool = True, event_reasons_api: bool = True,
                     throttle_masks: Sequence[tuple[float, int]] = ((0.0, 0x4),),
                     node: Sequence[FakeGpu] | None = None, visible: Sequence[int] | None = None,
                     call_log: Path | None = None):
    """See the module docstring. ``call_log``: also append each call as a JSON line (UUID, name, args),
    so a test can see what a launcher in another process did."""
    from profiling.backends.simulated import SensorModel
    from sd_energy_contract.gpus import detect_gpu_type, sensor_model

    nv = types.ModuleType("pynvml")
    node = list(node) if node is not None else default_node(count)
    gpus = sorted((node[i] for i in (range(len(node)) if visible is None else visible)), key=lambda g: g.pci_bus_id)
    if lock_error == "NoPermission":
        root = False  # locked clocks refused means no root: application clocks are then as restricted as ever

    class NVMLError(Exception):
        value = NVML_ERRORS["Unknown"]

        def __str__(self):
            return f"NVML error {self.value} ({type(self).__name__})"

    for name, code in NVML_ERRORS.items():
        setattr(nv, f"NVMLError_{name}", type(f"NVMLError_{name}", (NVMLError,), {"value": code}))
        setattr(nv, "NVML_ERROR_" + "".join("_" + c if c.isupper() else c.upper() for c in name).lstrip("_"), code)
    nv.NVMLError = NVMLError
    nv.NVML_SUCCESS = NVML_SUCCESS
    nv.NVML_CLOCK_SM, nv.NVML_CLOCK_MEM, nv.NVML_TEMPERATURE_GPU = 1, 2, 0
    nv.NVML_FI_DEV_POWER_AVERAGE, nv.NVML_FI_DEV_POWER_INSTANT = NVML_FI_DEV_POWER_AVERAGE, NVML_FI_DEV_POWER_INSTANT
    nv.NVML_VALUE_TYPE_UNSIGNED_INT = NVML_VALUE_TYPE_UNSIGNED_INT
    nv.NVML_RESTRICTED_API_SET_APPLICATION_CLOCKS = NVML_RESTRICTED_API_SET_APPLICATION_CLOCKS
    nv.NVML_FEATURE_DISABLED, nv.NVML_FEATURE_ENABLED = 0, 1
    nv.NVML_DEVICE_MIG_DISABLE, nv.NVML_DEVICE_MIG_ENABLE = 0, 1
    nv.nvmlClocksEventReasonGpuIdle, nv.nvmlClocksEventReasonApplicationsClocksSetting = 0x1, 0x2
    nv.nvmlClocksEventReasonSwPowerCap, nv.nvmlClocksEventReasonSwThermalSlowdown = 0x4, 0x20

    t0 = clock()
    state = {"locked": None, "app": None, "mem_locked": None, "energy_mj": FIRST_ENERGY_MJ, "calls": [],
             "power_mw": 250_000, "fail": {}}
    nv.state = state
    per_gpu = {f"h{i}": {"locked": None, "app": None, "mem_locked": None, "app_restricted": app_clocks_restricted}
               for i in range(len(gpus))}
    nv.gpu_state = per_gpu.__getitem__
    sensor_of = {h: SensorModel(sensor_model(detect_gpu_type(g.name) or ""), t0, state["power_mw"] / 1000.0,
                                energy0_mj=FIRST_ENERGY_MJ) for h, g in zip(per_gpu, gpus, strict=True)}
    nv.sensors = sensor_of

    def gpu_of(h) -> FakeGpu:
        return gpus[int(str(h)[1:].split(":")[0])]

    def whole(h) -> str:
        """The GPU handle of a handle; sensors and clocks are the whole GPU's."""
        if ":" in str(h):
            raise nv.NVMLError_NotSupported()  # power, energy and clocks are not per MIG instance
        return h

    def log(name):
        def deco(fn):
            def inner(*a):
                handle = a and isinstance(a[0], str) and a[0].startswith("h")
                state["calls"].append((name, a[1:] if handle else a))
                if call_log is not None:
                    with open(call_log, "a") as fh:
                        uuid = uuid_of(a[0]) if handle else None
                        fh.write(json.dumps({"call": name, "uuid": uuid, "args": list(a[1:] if handle else a)}) + "\n")
                if state["fail"].get(name, 0) > 0:
                    state["fail"][name] -= 1
                    raise nv.NVMLError_Unknown()
                return fn(*a)
            setattr(nv, name, inner)
            return inner
        return deco

    def uuid_of(h) -> str:
        g = gpu_of(h)
        return g.mig_uuids[int(h.split(":mig")[1])] if ":mig" in h else g.uuid

    # the true power every GPU draws, and what its sensors make of it
    def set_power_w(watts: float) -> None:
        state["power_mw"] = int(round(watts * 1000))
        sync()

    def sync() -> float:
        now = clock()
        for s in sensor_of.values():
            s.set_power(now, state["power_mw"] / 1000.0)
        return now

    nv.set_power_w = set_power_w

    # identity and the node
    log("nvmlInit")(lambda: None)
    log("nvmlShutdown")(lambda: None)
    log("nvmlDeviceGetCount")(lambda: len(gpus))
    log("nvmlSystemGetDriverVersion")(lambda: "570.124.06")

    @log("nvmlDeviceGetHandleByIndex")
    def _by_index(i):
        if not 0 <= i < len(gpus):
            raise nv.NVMLError_InvalidArgument()
        return f"h{i}"

    @log("nvmlDeviceGetHandleByUUID")
    def _by_uuid(uuid):
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        for i, g in enumerate(gpus):
            if g.uuid == uuid:
                return f"h{i}"
            if uuid in g.mig_uuids:
                return f"h{i}:mig{g.mig_uuids.index(uuid)}"
        raise nv.NVMLError_NotFound()

    @log("nvmlDeviceGetHandleByPciBusId")
    def _by_pci(bus_id):
        bus_id = bus_id.decode() if isinstance(bus_id, bytes) else bus_id
        for i, g in enumerate(gpus):
            if g.pci_bus_id.lower() == bus_id.lower():
                return f"h{i}"
        raise nv.NVMLError_NotFound()

    @log("nvmlDeviceGetName")
    def _name(h):
        g = gpu_of(h)
        return (f"{g.name} MIG 1g.10gb" if ":mig" in h else g.name).encode()

    log("nvmlDeviceGetUUID")(uuid_of)
    log("nvmlDeviceGetMinorNumber")(lambda h: gpu_of(whole(h)).minor)

    @log("nvmlDeviceGetPciInfo")
    def _pci(h):
        bus_id = gpu_of(h).pci_bus_id
        return types.SimpleNamespace(busId=bus_id, busIdLegacy=bus_id[4:], domain=0, bus=int(bus_id.split(":")[1], 16),
                                     device=0, pciDeviceId=0x233010DE)

    @log("nvmlDeviceGetMigMode")
    def _mig_mode(h):
        if ":mig" in h:
            raise nv.NVMLError_InvalidArgument()
        on = int(bool(gpu_of(h).mig_uuids))
        return [on, on]

    log("nvmlDeviceIsMigDeviceHandle")(lambda h: ctypes.c_uint(int(":mig" in h)))  # a c_uint, as the binding returns
    log("nvmlDeviceGetMaxMigDeviceCount")(lambda h: 7 if gpu_of(h).mig_uuids else 0)

    @log("nvmlDeviceGetMigDeviceHandleByIndex")
    def _mig_handle(h, j):
        if not 0 <= j < len(gpu_of(h).mig_uuids):
            raise nv.NVMLError_NotFound()
        return f"{h}:mig{j}"

    log("nvmlDeviceGetDeviceHandleFromMigDeviceHandle")(lambda h: h.split(":")[0])

    # clocks, and who may set them
    log("nvmlDeviceGetSupportedMemoryClocks")(lambda h: list(mem_clocks))
    log("nvmlDeviceGetSupportedGraphicsClocks")(lambda h, m: list(sm_clocks))

    def set_clock(h, key, value):
        per_gpu[whole(h)][key] = value
        state[key] = value

    @log("nvmlDeviceSetGpuLockedClocks")
    def _lock(h, lo, hi):
        if lock_error:
            raise getattr(nv, f"NVMLError_{lock_error}")()
        if not root:
            raise nv.NVMLError_NoPermission()
        set_clock(h, "locked", (lo, hi))

    @log("nvmlDeviceSetApplicationsClocks")
    def _app(h, mem, sm):
        if not root and per_gpu[whole(h)]["app_restricted"]:
            raise nv.NVMLError_NoPermission()
        set_clock(h, "app", (mem, sm))

    @log("nvmlDeviceSetAPIRestriction")
    def _restrict(h, api, restricted):
        if not root:
            raise nv.NVMLError_NoPermission()
        if api != NVML_RESTRICTED_API_SET_APPLICATION_CLOCKS:
            raise nv.NVMLError_NotSupported()
        per_gpu[whole(h)]["app_restricted"] = bool(restricted)

    log("nvmlDeviceGetAPIRestriction")(lambda h, api: int(per_gpu[whole(h)]["app_restricted"]))

    @log("nvmlDeviceSetMemoryLockedClocks")
    def _mem_lock(h, lo, hi):
        if not root:
            raise nv.NVMLError_NoPermission()
        set_clock(h, "mem_locked", (lo, hi))

    def reset(key):
        def fn(h):
            if not root and (key != "app" or per_gpu[whole(h)]["app_restricted"]):
                raise nv.NVMLError_NoPermission()
            set_clock(h, key, None)
        return fn

    log("nvmlDeviceResetMemoryLockedClocks")(reset("mem_locked"))
    log("nvmlDeviceResetGpuLockedClocks")(reset("locked"))
    log("nvmlDeviceResetApplicationsClocks")(reset("app"))

    @log("nvmlDeviceGetClockInfo")
    def _clock(h, kind):
        if kind == nv.NVML_CLOCK_MEM:
            return mem_clocks[0]
        g = per_gpu[whole(h)]
        return (g["locked"] or (None, None))[0] or (g["app"] or (None, sm_clocks[0]))[1]

    # sensors
    @log("nvmlDeviceGetTotalEnergyConsumption")
    def _energy(h):
        whole(h)
        if not energy_supported:
            raise nv.NVMLError_NotSupported()
        if sensors:
            return int(sensor_of[h].energy_mj(sync()))
        state["energy_mj"] += 12_500
        return state["energy_mj"]

    def usage_mw(h) -> int:
        if not sensors:
            return state["power_mw"]
        return int(round(sensor_of[h].power_usage_w(sync()) * 1000))

    log("nvmlDeviceGetPowerUsage")(lambda h: usage_mw(whole(h)))

    def field(field_id: int, h: str):
        ret, mw = NVML_SUCCESS, 0
        if field_id == NVML_FI_DEV_POWER_INSTANT and instant_field and sensor_of[h].instant_field:
            mw = int(round(sensor_of[h].power_instant_w(sync()) * 1000)) if sensors else state["power_mw"]
        elif field_id == NVML_FI_DEV_POWER_AVERAGE and instant_field:
            mw = usage_mw(h)
        else:
            ret = nv.NVML_ERROR_NOT_SUPPORTED
        value = types.SimpleNamespace(uiVal=mw, ulVal=mw, ullVal=mw, siVal=mw, sllVal=mw, dVal=float(mw), usVal=0)
        return types.SimpleNamespace(fieldId=field_id, scopeId=0, timestamp=int(clock() * 1e6), latencyUsec=0,
                                     valueType=NVML_VALUE_TYPE_UNSIGNED_INT, nvmlReturn=ret, value=value)

    log("nvmlDeviceGetFieldValues")(lambda h, ids: [field(i, whole(h)) for i in ids])

    def reasons(h) -> int:
        whole(h)
        elapsed = clock() - t0
        return max(((t, m) for t, m in throttle_masks if t <= elapsed), default=(0.0, 0))[1]

    if event_reasons_api:
        log("nvmlDeviceGetCurrentClocksEventReasons")(reasons)
    log("nvmlDeviceGetCurrentClocksThrottleReasons")(reasons)
    log("nvmlDeviceGetUtilizationRates")(lambda h: types.SimpleNamespace(gpu=97, memory=40))
    log("nvmlDeviceGetMemoryInfo")(lambda h: types.SimpleNamespace(used=10 * 2**30, total=80 * 2**30))
    log("nvmlDeviceGetTemperature")(lambda h, k: 55)
    return nv
