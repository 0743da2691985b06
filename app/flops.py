"""FLOPs and parameters per pipeline component, counted on the meta device (no weights, no GPU).

Each component is rebuilt from its config on ``meta`` and run once under PyTorch's
``FlopCounterMode``, which counts from tensor shapes. UNets use diffusers' classic attention
processor so the attention matmuls (``bmm``/``baddbmm``) can be told apart from the rest: the
SD1.5 UNet at 512x512 counts 338.6 GMACs without them (the figure thop/fvcore/calflops report)
and 401.6 GMACs with them.

Per image: each text encoder once per prompt (twice with classifier-free guidance: the negative
prompt too), the denoiser once per model call per step (batch doubled with CFG), the VAE decoder once.

    python -m app.flops --markdown > docs/COMPUTE.md      # every registered variant at its native size
    python -m app.flops --variant sdxl --height 768 --width 768 --steps 20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import warnings
from dataclasses import asdict, dataclass

import torch

from .models import VARIANTS, ModelVariant, get_variant
from .weights import CONFIG_ROOT, build_component, cache_root, random_arch

ATTENTION_OPS = ("bmm", "baddbmm", "attention")
DENOISERS = ("unet", "transformer")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


@dataclass
class ComponentCount:
    component: str
    params: int
    flops_per_call: float           # all counted ops, attention included
    attention_flops_per_call: float
    calls_per_image: float

    @property
    def flops_per_image(self) -> float:
        return self.flops_per_call * self.calls_per_image


def _count(fn) -> tuple[float, float]:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn()
    ops = counter.get_flop_counts().get("Global", {})
    total = float(sum(ops.values()))
    attention = float(sum(v for k, v in ops.items() if any(a in str(k) for a in ATTENTION_OPS)))
    return total, attention


def _meta(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype, device="meta")


def _vae_factor(vae_cfg: dict) -> int:
    blocks = vae_cfg.get("block_out_channels") or vae_cfg["decoder_block_out_channels"]  # AutoencoderKL / DC-AE
    return 2 ** (len(blocks) - 1)


def _denoiser_call(name: str, model, cfg: dict, family: str, n: int, lat_h: int, lat_w: int):
    if name == "unet":
        kw = {}
        if cfg.get("addition_embed_type") == "text_time":
            k = 5 if family == "sdxl-refiner" else 6
            text_dim = cfg["projection_class_embeddings_input_dim"] - k * cfg["addition_time_embed_dim"]
            kw["added_cond_kwargs"] = {"text_embeds": _meta(n, text_dim), "time_ids": _meta(n, k)}
        ctx = cfg["cross_attention_dim"]
        ctx = ctx[0] if isinstance(ctx, list | tuple) else ctx
        return lambda: model(_meta(n, cfg["in_channels"], lat_h, lat_w), _meta(n), encoder_hidden_states=_meta(n, 77, ctx),
                             **kw)
    cls = cfg["_class_name"]
    t = _meta(n)
    if cls == "SD3Transformer2DModel":  # CLIP-L/G (77) padded next to T5's 256 tokens
        return lambda: model(hidden_states=_meta(n, cfg["in_channels"], lat_h, lat_w),
                             encoder_hidden_states=_meta(n, 77 + 256, cfg["joint_attention_dim"]),
                             pooled_projections=_meta(n, cfg["pooled_projection_dim"]), timestep=t)
    if cls == "PixArtTransformer2DModel":
        seq = 120 if cfg.get("use_additional_conditions") else 300
        cond = ({"resolution": _meta(n, 2), "aspect_ratio": _meta(n, 1)} if cfg.get("use_additional_conditions")
                else {"resolution": None, "aspect_ratio": None})
        return lambda: model(_meta(n, cfg["in_channels"], lat_h, lat_w), encoder_hidden_states=_meta(n, seq, cfg["caption_channels"]),
                             timestep=t, added_cond_kwargs=cond)
    if cls == "SanaTransformer2DModel":  # Gemma-2 hidden states, 300 tokens
        return lambda: model(hidden_states=_meta(n, cfg["in_channels"], lat_h, lat_w),
                             encoder_hidden_states=_meta(n, 300, cfg["caption_channels"]), timestep=t)
    if cls == "FluxTransformer2DModel":
        tokens = (lat_h // 2) * (lat_w // 2)
        kw = {"guidance": _meta(n)} if cfg.get("guidance_embeds") else {}
        return lambda: model(hidden_states=_meta(n, tokens, cfg["in_channels"]),
                             encoder_hidden_states=_meta(n, 256, cfg["joint_attention_dim"]),
                             pooled_projections=_meta(n, cfg["pooled_projection_dim"]), timestep=t,
                             img_ids=_meta(tokens, 3), txt_ids=_meta(256, 3), **kw)
    raise NotImplementedError(f"no FLOP recipe for {cls}")


def profile_configs(configs: dict[str, dict], family: str, height: int, width: int, steps: int,
                    guidance: float, model_calls_per_step: float = 1.0) -> list[ComponentCount]:
    """Counts for one image from component configs (``configs/models/<arch>`` or a loaded pipeline)."""
    cfg_factor = 2 if guidance > 1.0 and family != "flux" else 1
    factor = _vae_factor(configs["vae"])
    lat_h, lat_w = height // factor, width // factor
    out = []
    for name, cfg in configs.items():
        if name not in (*DENOISERS, "vae", *TEXT_ENCODERS) or cfg is None:
            continue
        model = build_component(cfg, "meta")
        params = sum(p.numel() for p in model.parameters())
        if name in DENOISERS:
            if name == "unet":
                from diffusers.models.attention_processor import AttnProcessor

                model.set_attn_processor(AttnProcessor())  # bmm-based: attention matmuls countable
            flops, att = _count(_denoiser_call(name, model, cfg, family, cfg_factor, lat_h, lat_w))
            out.append(ComponentCount(name, params, flops, att, steps * model_calls_per_step))
        elif name == "vae":
            z = _meta(1, cfg["latent_channels"], lat_h, lat_w)  # decoder only: what generation runs
            flops, att = _count(lambda model=model, z=z: model.decode(z))
            out.append(ComponentCount("vae_decoder", params, flops, att, 1))
        else:
            seq = {"t5": 256, "gemma2": 300}.get(cfg.get("model_type"), cfg.get("max_position_embeddings", 77))
            ids = torch.zeros(1, seq, dtype=torch.long, device="meta")
            flops, att = _count(lambda model=model, ids=ids: model(ids))
            out.append(ComponentCount(name, params, flops, att, cfg_factor))
    return out


def _arch_configs(variant: ModelVariant) -> dict[str, dict]:
    arch = CONFIG_ROOT / random_arch(variant)
    configs = {p.stem: json.loads(p.read_text()) for p in arch.glob("*.json") if p.stem not in ("scheduler", "model_index")}
    if variant.key == "flux.1-dev":
        configs["transformer"] = {**configs["transformer"], "guidance_embeds": True}
    return configs


def pipeline_configs(pipe) -> dict[str, dict]:
    """Component configs of a loaded pipeline (tiny, random or pretrained) as plain dicts."""
    out = {}
    for name in (*DENOISERS, "vae", *TEXT_ENCODERS):
        comp = getattr(pipe, name, None)
        if comp is None:
            continue
        cfg = comp.config
        if hasattr(cfg, "to_dict"):  # transformers
            d = cfg.to_dict()
            d["architectures"] = [type(comp).__name__]
        else:
            d = {**dict(cfg), "_class_name": type(comp).__name__}
        out[name] = d
    return out


def flops_per_image(configs: dict[str, dict], family: str, height: int, width: int, steps: int,
                    guidance: float) -> float | None:
    """Cached total: counting a 2.6B UNet on meta takes seconds, a lookup takes microseconds."""
    key = hashlib.sha256(json.dumps([configs, family, height, width, steps, guidance], sort_keys=True,
                                    default=str).encode()).hexdigest()[:20]
    path = cache_root() / "flops.json"
    cache = json.loads(path.read_text()) if path.exists() else {}
    if key not in cache:
        try:
            counts = profile_configs(configs, family, height, width, steps, guidance)
        except (NotImplementedError, RuntimeError, TypeError, KeyError):
            return None
        cache[key] = sum(c.flops_per_image for c in counts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cache))
    return cache[key]


def variant_table(variant: ModelVariant, height: int | None = None, width: int | None = None,
                  steps: int | None = None, guidance: float | None = None) -> list[dict]:
    h, w = height or variant.native_size, width or variant.native_size
    s = steps or variant.default_steps
    g = variant.default_guidance if guidance is None else guidance
    rows = []
    for c in profile_configs(_arch_configs(variant), variant.family, h, w, s, g):
        rows.append({"variant": variant.key, "height": h, "width": w, "steps": s, "guidance": g, **asdict(c),
                     "flops_per_image": c.flops_per_image})
    return rows


def _fmt(x: float) -> str:
    return f"{x / 1e12:.3f}"


def markdown(rows_by_variant: dict[str, list[dict]]) -> str:
    lines = ["# Compute per image, per variant", "",
             "Generated by `python -m app.flops --markdown > docs/COMPUTE.md` (FLOPs counted on the meta device;",
             "1 MAC = 2 FLOPs). Native size, default steps and guidance of each variant; CFG doubles the denoiser",
             "batch and the text encoding. Attention = the attention-score and attention-value matmuls (Sana's",
             "linear attention counts as ordinary matmuls). SD3 is counted with its T5 encoder (the app's `random`",
             "weights leave T5 out, as many deployments do).", "",
             "| variant | size | steps | component | params (M) | TFLOPs/call | of which attention | calls/image | TFLOPs/image |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, rows in rows_by_variant.items():
        for r in rows:
            lines.append(f"| {key} | {r['height']} | {r['steps']} | {r['component']} | {r['params'] / 1e6:.1f} | "
                         f"{_fmt(r['flops_per_call'])} | {_fmt(r['attention_flops_per_call'])} | {r['calls_per_image']:g} | "
                         f"{_fmt(r['flops_per_image'])} |")
        total = sum(r["flops_per_image"] for r in rows)
        lines.append(f"| **{key}** | | | **total** | {sum(r['params'] for r in rows) / 1e6:.1f} | | | | **{_fmt(total)}** |")
    lines += ["", "Check: SD1.5 UNet at 512x512, one call without CFG: 338.6 GMACs without attention matmuls (thop,",
              "fvcore and calflops report about 339) and 401.6 GMACs with them (about 402); see tests/test_flops.py."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="FLOPs per component and per image, counted on the meta device.")
    ap.add_argument("--variant", default=None, help="one variant (default: all registered)")
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--guidance", type=float)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args(argv)
    if a.variant:
        try:
            get_variant(a.variant)
        except KeyError as exc:  # UnknownVariantError: its message names the close matches
            ap.exit(2, f"flops.py: error: --variant: {exc.args[0]}\n")
    for name in ("height", "width", "steps"):
        if getattr(a, name) is not None and getattr(a, name) <= 0:
            ap.exit(2, f"flops.py: error: --{name}: {getattr(a, name)} is not a positive number\n")
    keys = [a.variant] if a.variant else list(VARIANTS)
    tables = {k: variant_table(get_variant(k), a.height, a.width, a.steps, a.guidance) for k in keys}
    if a.markdown:
        print(markdown(tables), end="")
        return 0
    for key, rows in tables.items():
        for r in rows:
            print(f"{key:<18} {r['component']:<15} params {r['params'] / 1e6:9.1f} M  {r['flops_per_call'] / 1e12:9.3f} "
                  f"TFLOPs/call ({r['attention_flops_per_call'] / 1e12:.3f} attention) x {r['calls_per_image']:g}")
        print(f"{key:<18} total {sum(r['flops_per_image'] for r in rows) / 1e12:.3f} TFLOPs per image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["ComponentCount", "profile_configs", "pipeline_configs", "flops_per_image", "variant_table"]
