"""The app as an in-process workload (``launch.sh --in-process``): load the model once, run it many times.

The launcher finds ``make_workload`` through the ``sd_energy.workloads`` entry point
(``stable-diffusion``, see setup.cfg) and hands it the arguments it would otherwise pass to
``app/StableDiffusionViaHF.py`` (``--app-params``). They are parsed by the same click command and
checked by the same ``check_inputs``, so both modes accept exactly the same arguments. Each run
takes the one generation path (``runner.generate``) on the resident pipeline and leaves what a
process run leaves: phase events, the metrics JSON, the images and their generation_config.json.
See ``sd_energy_contract.workload`` for the protocol.
"""

from __future__ import annotations

from dataclasses import replace

from sd_energy_contract.errors import InputError
from sd_energy_contract.workload import RunContext

from .cli import MODE_OPTIONS, parse_options, quiet_libraries, request_from_options
from .pipeline import PipelineCache, resolve_device
from .runner import DEFAULT_WARMUP, check_inputs, generate, load, metrics_targets, record, run_config
from .timing import PhaseRecorder


class StableDiffusionWorkload:
    """One checked generation request and its resident pipeline."""

    name = "stable-diffusion"

    def __init__(self, argv: list[str]):
        options = parse_options(argv)
        for key in MODE_OPTIONS:
            if options.get(key):
                flag = "--" + key.replace("_", "-")
                raise InputError(flag, None, "in-process runs do one generation each; run this mode as the app "
                                             "process instead (without --in-process)")
        request = request_from_options(options)
        if request.warmup is None:  # the launcher runs this workload: warm up as under it in process mode
            request = replace(request, warmup=DEFAULT_WARMUP)
        self.request, self.variant = check_inputs(request)
        self.cache = PipelineCache()
        self._warm = False

    def load(self) -> dict:
        """Load the pipeline (no phase events: no run is being measured); returns the rows' app config."""
        quiet_libraries()
        r = self.request
        wl = load(r, self.variant, PhaseRecorder(resolve_device(r.execution.device)), self.cache)
        return run_config(r, self.variant, wl, r.batch_size, r.num_images)

    def run(self, ctx: RunContext) -> dict:
        """One run on the loaded pipeline; the first one does the configured warm-up (--warmup)."""
        r = self.request
        if self.cache.pipeline is None:
            raise RuntimeError("run() before load(): the in-process workload loads once, before its runs")
        recorder = PhaseRecorder(resolve_device(r.execution.device), ctx.events_path, ctx.on_phase)
        try:
            g = generate(r, self.variant, recorder, self.cache, warmup=0 if self._warm else r.warmup,
                         log=lambda *_: None)
        finally:
            recorder.close()
        self._warm = True
        return record(g, metrics_targets(r.export_metrics, ctx.metrics_path))

    def close(self) -> None:
        self.cache.clear()


def make_workload(argv: list[str]) -> StableDiffusionWorkload:
    """The ``sd_energy.workloads`` factory: a bad argument raises ``InputError`` naming it."""
    return StableDiffusionWorkload(list(argv))
