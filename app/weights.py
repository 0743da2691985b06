"""Where a pipeline's weights come from: a hub id or local path, full-size random, or tiny.

* ``pretrained``: real weights through ``from_pretrained`` (safetensors only unless the
  user opts into pickle, never remote code).
* ``random``: the real full-size architecture from ``configs/models/<arch>/``, random init,
  no download. Real FLOPs, memory traffic and energy; meaningless pictures.
* ``tiny``: a few-MB model of the same family, built once and cached, so the whole tool
  chain runs on a laptop CPU in seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch

from sd_energy_contract import env

from . import tokenizers_local as toks
from .models import ModelVariant

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs" / "models"
TINY_VERSION = "v2"  # bump when the tiny architectures change, so stale caches are rebuilt

# Variant family -> directory under configs/models holding its full-size architecture.
RANDOM_ARCH = {
    "sd1": "sd1",
    "sdxl": "sdxl",
    "sdxl-refiner": "sdxl-refiner",
    "sd3": "sd3",
    "pixart-alpha": "pixart-alpha",
    "pixart-sigma": "pixart-sigma",
    "flux": "flux",
    "sana": "sana",
}
TINY_FAMILIES = ("sd1", "sd2", "sdxl", "sdxl-refiner", "sd3", "pixart-alpha", "pixart-sigma")


class WeightsError(RuntimeError):
    """Weights cannot be had; the message says what to do instead."""


def cache_root() -> Path:
    return Path(os.environ.get(env.CACHE, Path.home() / ".cache" / "sd-energy"))


def random_arch(variant: ModelVariant) -> str:
    if variant.family == "sd2":
        return "sd2-768" if variant.native_size == 768 else "sd2-512"
    try:
        return RANDOM_ARCH[variant.family]
    except KeyError:
        raise WeightsError(f"no full-size architecture config ships for family {variant.family!r}; "
                           f"use --weights tiny or a local path") from None


def pretrained_is_local(model_id: str) -> bool:
    """True when the weights can be loaded without a download (a local dir or a filled HF cache)."""
    if Path(model_id).is_dir():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(model_id, "model_index.json")
        return isinstance(hit, str)
    except Exception:  # noqa: BLE001 - a malformed id is simply "not local"
        return False


# --------------------------------------------------------------------------- pretrained

def multi_gpu_device_map() -> str | None:
    """With more than one GPU visible, spread a pipeline's components over them (diffusers' "balanced")."""
    return "balanced" if torch.cuda.is_available() and torch.cuda.device_count() > 1 else None


def load_pretrained(variant: ModelVariant, dtype: torch.dtype, allow_pickle: bool = False,
                    steps: int | None = None, device_map: str | None = None):
    import diffusers

    cls = getattr(diffusers, variant.pipeline_class)
    kwargs = {"torch_dtype": dtype, "use_safetensors": not allow_pickle}
    if device_map:
        kwargs["device_map"] = device_map
    if variant.family in ("sd1", "sd2"):
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        if variant.unet_override:
            kwargs["unet"] = _load_unet_override(variant, dtype, steps)
        return cls.from_pretrained(variant.hub_id, **kwargs)
    except (OSError, ValueError) as exc:
        raise WeightsError(
            f"cannot load {variant.hub_id!r} ({str(exc).splitlines()[0][:160]}); "
            "pass a local directory with --custom-model PATH, or use --weights random (full-size, no download) "
            "or --weights tiny"
        ) from None


def _load_unet_override(variant: ModelVariant, dtype: torch.dtype, steps: int | None):
    """SDXL-Lightning: a distilled UNet checkpoint loaded into the SDXL base architecture."""
    from diffusers import UNet2DConditionModel
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file

    repo, pattern = variant.unet_override.split(":", 1)
    with default_dtype(dtype):  # no fp32 copy of the 2.6B UNet before the checkpoint replaces its weights
        unet = UNet2DConditionModel.from_config(_read(CONFIG_ROOT / "sdxl" / "unet.json"))
    path = hf_hub_download(repo, pattern.format(steps=steps or variant.default_steps))
    unet.load_state_dict(load_file(path))
    return unet


# --------------------------------------------------------------------------- random

def _read(path: Path) -> dict:
    return json.loads(path.read_text())


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype | None):
    """Parameters created inside are ``dtype`` from the start (how transformers builds a model in a dtype)."""
    if dtype is None:
        yield
        return
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build_component(cfg: dict, device: torch.device | str = "meta", dtype: torch.dtype | None = None):
    """Instantiate a diffusers/transformers model from a shipped config on ``device``, its parameters
    created (and randomly initialised) in ``dtype`` directly: building in fp32 and converting would
    need twice the memory at the peak (FLUX's 12B transformer: 48 GB in fp32, 24 GB in bf16)."""
    import diffusers
    import transformers

    with torch.device(device), default_dtype(dtype):
        if "_class_name" in cfg:
            return getattr(diffusers, cfg["_class_name"]).from_config(cfg)
        arch = cfg["architectures"][0]
        conf = transformers.AutoConfig.for_model(**{k: v for k, v in cfg.items() if k != "architectures"})
        return getattr(transformers, arch)(conf)


def load_random(variant: ModelVariant, dtype: torch.dtype, device: str, seed: int = 0,
                skip_t5: bool = True):
    """The full-size pipeline with random weights, built directly on ``device``.

    ``skip_t5``: SD3 runs without its 4.7B T5 encoder (diffusers supports
    ``text_encoder_3=None``), as many deployments do to save memory.
    """
    import diffusers

    arch_dir = CONFIG_ROOT / random_arch(variant)
    index = _read(arch_dir / "model_index.json")
    torch.manual_seed(seed)
    parts: dict = {}
    for comp in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        path = arch_dir / f"{comp}.json"
        if not path.exists():
            continue
        if comp == "text_encoder_3" and skip_t5:
            parts[comp] = None
            parts["tokenizer_3"] = None
            continue
        cfg = _read(path)
        if variant.key == "flux.1-dev" and comp == "transformer":
            cfg = {**cfg, "guidance_embeds": True}
        parts[comp] = _cast_rest(build_component(cfg, device, dtype), dtype).eval()
    sched = _read(arch_dir / "scheduler.json")
    parts["scheduler"] = getattr(diffusers, sched["_class_name"]).from_config(sched)
    _attach_tokenizers(parts, index, cache_root() / "tokenizers")
    cls = getattr(diffusers, variant.pipeline_class)
    extra = {}
    if variant.family in ("sd1", "sd2"):
        extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    if variant.family == "sdxl-refiner":
        extra = {"text_encoder": None, "tokenizer": None, "requires_aesthetics_score": True}
    return cls(**parts, **extra)


def _cast_rest(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast what a model made in fp32 on purpose (sin-cos position tables, built from numpy); the
    parameters are ``dtype`` already, and a model with nothing to cast is left alone."""
    tensors = [*model.parameters(), *model.buffers()]
    return model.to(dtype) if any(t.is_floating_point() and t.dtype != dtype for t in tensors) else model


def _attach_tokenizers(parts: dict, index: dict, root: Path) -> None:
    for enc, tok in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"), ("text_encoder_3", "tokenizer_3")):
        model = parts.get(enc)
        if model is None:
            continue
        if model.config.model_type in ("t5", "gemma2"):  # sentencepiece models: a byte-level stand-in
            parts[tok] = toks.build_t5_tokenizer(index.get("max_sequence_length", 256))
        else:
            pad = index.get("pad_token" if enc == "text_encoder" else "pad_token_2", toks.EOS)
            name = "clip-pad-eos" if pad == toks.EOS else "clip-pad-bang"
            parts[tok] = toks.load_clip_tokenizer(toks.write_clip_tokenizer(root / name, pad_token=pad))


# --------------------------------------------------------------------------- tiny

def _tiny_clip(with_projection: bool = False, hidden: int = 32, proj: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(hidden_size=hidden, intermediate_size=37, num_hidden_layers=5, num_attention_heads=4,
                         max_position_embeddings=77, vocab_size=toks.clip_vocab_size(), projection_dim=proj,
                         hidden_act="gelu", bos_token_id=toks.clip_vocab_size() - 2, eos_token_id=toks.clip_eos_id(),
                         pad_token_id=toks.clip_eos_id())
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)


def _tiny_vae(latent_channels: int = 4, **kw):
    from diffusers import AutoencoderKL

    # Four blocks so the VAE downsamples by 8 like the real one: sizes behave as in production.
    return AutoencoderKL(block_out_channels=[8, 16, 32, 32], in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                         latent_channels=latent_channels, norm_num_groups=8, layers_per_block=1, **kw)


def _build_tiny(family: str):
    import diffusers
    from diffusers import UNet2DConditionModel

    sd_sched = _read(CONFIG_ROOT / "sd1" / "scheduler.json")
    if family in ("sd1", "sd2"):
        unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4,
                                    out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                    attention_head_dim=8, norm_num_groups=32,
                                    use_linear_projection=family == "sd2")
        pad = toks.EOS if family == "sd1" else "!"
        pred = "epsilon" if family == "sd1" else "v_prediction"
        return diffusers.StableDiffusionPipeline(
            unet=unet, vae=_tiny_vae(), text_encoder=_tiny_clip(),
            tokenizer=_tok(pad), scheduler=diffusers.PNDMScheduler.from_config({**sd_sched, "prediction_type": pred}),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if family in ("sdxl", "sdxl-refiner"):
        refiner = family == "sdxl-refiner"
        unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4,
                                    out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                    use_linear_projection=True, addition_embed_type="text_time",
                                    addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                                    projection_class_embeddings_input_dim=(5 * 8 + 32) if refiner else (6 * 8 + 32),
                                    cross_attention_dim=32 if refiner else 64, norm_num_groups=1)
        sched = diffusers.EulerDiscreteScheduler.from_config(_read(CONFIG_ROOT / "sdxl" / "scheduler.json"))
        common = dict(unet=unet, vae=_tiny_vae(force_upcast=False), scheduler=sched,
                      text_encoder_2=_tiny_clip(with_projection=True), tokenizer_2=_tok("!"))
        if refiner:
            return diffusers.StableDiffusionXLImg2ImgPipeline(text_encoder=None, tokenizer=None,
                                                              requires_aesthetics_score=True, **common)
        return diffusers.StableDiffusionXLPipeline(text_encoder=_tiny_clip(), tokenizer=_tok(toks.EOS), **common)
    if family == "sd3":
        from diffusers import SD3Transformer2DModel

        transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2,
                                            attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                            joint_attention_dim=64, pooled_projection_dim=64, out_channels=4)
        return diffusers.StableDiffusion3Pipeline(
            transformer=transformer, vae=_tiny_vae(shift_factor=0.0609, scaling_factor=1.5035,
                                                   use_quant_conv=False, use_post_quant_conv=False),
            text_encoder=_tiny_clip(True), tokenizer=_tok(toks.EOS), text_encoder_2=_tiny_clip(True),
            tokenizer_2=_tok("!"), text_encoder_3=None, tokenizer_3=None,
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    if family in ("pixart-alpha", "pixart-sigma"):
        from transformers import T5Config, T5EncoderModel

        transformer = diffusers.PixArtTransformer2DModel(
            sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
            in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
        t5 = T5EncoderModel(T5Config(vocab_size=300, d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                                     feed_forward_proj="gated-gelu", is_encoder_decoder=False, pad_token_id=0,
                                     eos_token_id=1))
        cls = diffusers.PixArtAlphaPipeline if family == "pixart-alpha" else diffusers.PixArtSigmaPipeline
        return cls(tokenizer=toks.build_t5_tokenizer(120 if family == "pixart-alpha" else 300), text_encoder=t5,
                   vae=_tiny_vae(), transformer=transformer, scheduler=diffusers.DPMSolverMultistepScheduler())
    raise WeightsError(f"--weights tiny: no tiny model for family {family!r}; tiny exists for "
                       f"{', '.join(TINY_FAMILIES)}; use --weights random for this variant")


def _tok(pad: str):
    name = "clip-pad-eos" if pad == toks.EOS else "clip-pad-bang"
    return toks.load_clip_tokenizer(toks.write_clip_tokenizer(cache_root() / "tokenizers" / name, pad_token=pad))


def tiny_path(family: str) -> Path:
    """Build (once) and return the directory of the tiny pipeline of ``family``."""
    path = cache_root() / "tiny" / TINY_VERSION / family
    if (path / "model_index.json").exists():
        return path
    torch.manual_seed(0)  # the same tiny weights on every machine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = _build_tiny(family)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(path) if not path.exists() else shutil.rmtree(tmp)
    return path


def load_tiny(variant: ModelVariant, dtype: torch.dtype):
    import diffusers

    cls = getattr(diffusers, variant.pipeline_class)
    # Components the tiny models leave out on purpose must be named as absent when loading.
    absent = {"sd3": ("text_encoder_3", "tokenizer_3"), "sdxl-refiner": ("text_encoder", "tokenizer")}
    extra = dict.fromkeys(absent.get(variant.family, ()))
    return cls.from_pretrained(tiny_path(variant.family), torch_dtype=dtype, use_safetensors=True, **extra)
