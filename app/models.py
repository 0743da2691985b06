"""Model-variant registry: what each named variant is, so the rest of the app never hard-codes a hub id.

A variant carries what a benchmark needs to run it fairly at its own operating point: the
native resolution, the step count and guidance the authors recommend, and the scheduler it
ships with. ``family`` decides which pipeline class, which tiny/random architecture and which
schedulers fit.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field

# Families and the diffusers pipeline each one runs through.
FAMILY_PIPELINES: dict[str, str] = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl-refiner": "StableDiffusionXLImg2ImgPipeline",
    "pixart-alpha": "PixArtAlphaPipeline",
    "pixart-sigma": "PixArtSigmaPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "sana": "SanaPipeline",
    "flux": "FluxPipeline",
}

# Families trained with flow matching: only flow schedulers fit them.
FLOW_FAMILIES = frozenset({"sd3", "flux", "sana"})

# Height/width must be a multiple of this (VAE downsampling x transformer patch size).
FAMILY_SIZE_FACTOR: dict[str, int] = {
    "sd1": 8,
    "sd2": 8,
    "sdxl": 8,
    "sdxl-refiner": 8,
    "pixart-alpha": 16,
    "pixart-sigma": 16,
    "sd3": 16,
    "sana": 32,
    "flux": 16,
}


@dataclass(frozen=True)
class ModelVariant:
    key: str
    hub_id: str
    family: str
    native_size: int
    default_steps: int
    default_scheduler: str
    default_guidance: float
    approx_memory_gib: float
    notes: str = ""
    # Extra components loaded on top of the base repo, e.g. SDXL-Lightning's UNet checkpoint.
    unet_override: str | None = None
    allowed_steps: tuple[int, ...] = field(default_factory=tuple)

    @property
    def pipeline_class(self) -> str:
        return FAMILY_PIPELINES[self.family]

    @property
    def size_factor(self) -> int:
        return FAMILY_SIZE_FACTOR[self.family]

    @property
    def needs_init_image(self) -> bool:
        return self.family == "sdxl-refiner"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pipeline_class"] = self.pipeline_class
        return d


_VARIANTS = [
    ModelVariant("sd-v1.4", "CompVis/stable-diffusion-v1-4", "sd1", 512, 50, "pndm", 7.5, 4.0,
                 "original LDM release, 860M UNet"),
    ModelVariant("sd-v1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5", "sd1", 512, 50, "pndm", 7.5, 4.0,
                 "most-benchmarked SD model; 860M UNet, CLIP ViT-L/14"),
    ModelVariant("sd-v2.0", "stabilityai/stable-diffusion-2", "sd2", 768, 50, "ddim", 7.5, 5.0,
                 "v-prediction at 768 px, OpenCLIP ViT-H"),
    ModelVariant("sd-v2.1", "stabilityai/stable-diffusion-2-1", "sd2", 768, 50, "dpm++", 7.5, 5.0,
                 "v-prediction at 768 px"),
    ModelVariant("sd-v2.1-base", "stabilityai/stable-diffusion-2-1-base", "sd2", 512, 50, "pndm", 7.5, 4.5,
                 "epsilon prediction at 512 px"),
    ModelVariant("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "sdxl", 1024, 30, "euler", 5.0, 10.0,
                 "2.6B UNet, two text encoders"),
    ModelVariant("sdxl-refiner", "stabilityai/stable-diffusion-xl-refiner-1.0", "sdxl-refiner", 1024, 30,
                 "euler", 5.0, 9.0, "img2img refiner: needs --init-image"),
    ModelVariant("sd-turbo", "stabilityai/sd-turbo", "sd2", 512, 1, "euler-a", 0.0, 4.0,
                 "adversarial distillation of SD2.1; 1-4 steps, no guidance"),
    ModelVariant("sdxl-turbo", "stabilityai/sdxl-turbo", "sdxl", 512, 1, "euler-a", 0.0, 9.0,
                 "adversarial distillation of SDXL at 512 px; 1-4 steps, no guidance"),
    ModelVariant("sdxl-lightning", "stabilityai/stable-diffusion-xl-base-1.0", "sdxl", 1024, 4, "euler", 0.0, 10.0,
                 "ByteDance SDXL-Lightning UNet loaded into the SDXL base; trailing timesteps",
                 unet_override="ByteDance/SDXL-Lightning:sdxl_lightning_{steps}step_unet.safetensors",
                 allowed_steps=(2, 4, 8)),
    ModelVariant("pixart-alpha", "PixArt-alpha/PixArt-XL-2-1024-MS", "pixart-alpha", 1024, 20, "dpm++", 4.5, 12.0,
                 "DiT 0.6B with T5-XXL text encoder"),
    ModelVariant("pixart-sigma", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "pixart-sigma", 1024, 20, "dpm++", 4.5,
                 12.0, "DiT 0.6B, SDXL VAE, T5-XXL"),
    ModelVariant("sd3-medium", "stabilityai/stable-diffusion-3-medium-diffusers", "sd3", 1024, 28, "flow-euler",
                 7.0, 18.0, "MMDiT 2B, CLIP-L + CLIP-G + T5-XXL"),
    ModelVariant("sana-600m", "Efficient-Large-Model/Sana_600M_1024px_diffusers", "sana", 1024, 20, "flow-euler",
                 4.5, 8.0, "linear-attention DiT with DC-AE (32x)"),
    ModelVariant("flux.1-schnell", "black-forest-labs/FLUX.1-schnell", "flux", 1024, 4, "flow-euler", 0.0, 34.0,
                 "12B rectified-flow transformer, timestep-distilled"),
    ModelVariant("flux.1-dev", "black-forest-labs/FLUX.1-dev", "flux", 1024, 28, "flow-euler", 3.5, 34.0,
                 "12B, guidance-distilled"),
    # Icon fine-tunes (SD1.x architecture, so random/tiny weights work for them).
    ModelVariant("flat-design-icons", "milyiyo/flat-design-icons", "sd1", 512, 25, "dpm++", 7.5, 4.0,
                 "SD1.x fine-tune for flat icons"),
    ModelVariant("sd-logo", "nicky007/stable-diffusion-logo-fine-tuned", "sd1", 512, 25, "dpm++", 7.5, 4.0,
                 "SD1.x fine-tune for logos"),
    ModelVariant("fantassified-icons", "proximasanfinetuning/fantassified-icons-v2", "sd1", 512, 25, "dpm++", 7.5,
                 4.0, "SD1.x fine-tune for fantasy icons"),
]

VARIANTS: dict[str, ModelVariant] = {v.key: v for v in _VARIANTS}
ICON_VARIANTS = ("flat-design-icons", "sd-logo", "fantassified-icons")
# The icon benchmark's prompts, also the harness's ``--prompt-set icons``.
ICON_PROMPTS = ("bank transfer icon", "minimal fintech payment icon", "switch transfer symbol",
                "notification bell icon", "premium investment logo")


class UnknownVariantError(KeyError):
    """Raised with a message that names the close matches, so the CLI can print it as is."""

    def __init__(self, name: str):
        close = difflib.get_close_matches(name, VARIANTS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        super().__init__(f"unknown model variant {name!r}{hint}; see --list-variants")
        self.message = self.args[0]


def get_variant(name: str) -> ModelVariant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise UnknownVariantError(name) from None


def custom_variant(model_id: str, family: str = "sd1") -> ModelVariant:
    """A variant for ``--custom-model``: any hub id or local path, defaults from its family."""
    size = {"sd1": 512, "sd2": 768}.get(family, 1024)
    sched = "flow-euler" if family in FLOW_FAMILIES else "dpm++"
    return ModelVariant("custom", model_id, family, size, 30, sched, 7.5, 0.0, "user-supplied model")
