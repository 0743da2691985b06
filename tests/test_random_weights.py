"""`random` weights: the full-size architectures from configs/models build on the meta device with published sizes."""

from __future__ import annotations

import json

import pytest

from app.weights import CONFIG_ROOT, build_component

# Published parameter counts (diffusers/transformers model cards and papers).
EXACT = {
    ("sd1", "unet"): 859_520_964,          # SD v1.x UNet, "859.5 M"
    ("sd1", "vae"): 83_653_863,
    ("sd1", "text_encoder"): 123_060_480,  # CLIP ViT-L/14 text tower
    ("sd2-768", "unet"): 865_910_724,
    ("sd2-768", "text_encoder"): 340_387_840,  # OpenCLIP ViT-H text tower
    ("sdxl", "unet"): 2_567_463_684,       # "2.6 B"
    ("sdxl", "text_encoder_2"): 694_659_840,   # OpenCLIP bigG with projection
    ("sd3", "transformer"): 2_028_328_000,     # SD3-medium MMDiT "2 B"
    ("pixart-sigma", "transformer"): 610_856_096,  # "0.6 B"
}
APPROX = {("flux", "transformer"): 11.9e9, ("pixart-alpha", "transformer"): 0.611e9,
          ("sdxl-refiner", "unet"): 2.26e9, ("sana", "transformer"): 0.592e9, ("sana", "vae"): 0.312e9,
          ("sana", "text_encoder"): 2.614e9}


def count(arch, comp):
    model = build_component(json.loads((CONFIG_ROOT / arch / f"{comp}.json").read_text()), "meta")
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch, comp", list(EXACT))
def test_published_parameter_counts(arch, comp):
    assert count(arch, comp) == EXACT[(arch, comp)]


@pytest.mark.parametrize("arch, comp", list(APPROX))
def test_headline_sizes(arch, comp):
    assert count(arch, comp) == pytest.approx(APPROX[(arch, comp)], rel=0.01)


def test_every_variant_has_an_architecture_or_a_clear_error():
    from app.models import VARIANTS
    from app.weights import WeightsError, random_arch

    for v in VARIANTS.values():
        try:
            assert (CONFIG_ROOT / random_arch(v) / "model_index.json").exists()
        except WeightsError as exc:
            assert "--weights tiny or a local path" in str(exc)


def test_random_pipeline_builds_full_size_sd15_on_meta():
    """The whole random SD1.5 pipeline assembles (tokenizer included) without any download."""
    import torch

    from app.models import get_variant
    from app.weights import load_random

    pipe = load_random(get_variant("sd-v1.5"), torch.float16, "meta")
    assert sum(p.numel() for p in pipe.unet.parameters()) == EXACT[("sd1", "unet")]
    ids = pipe.tokenizer("an astronaut", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and max(ids) < pipe.text_encoder.config.vocab_size


@pytest.mark.parametrize("variant", ["pixart-alpha", "flux.1-schnell", "sana-600m"])
def test_random_t5_pipelines_assemble_on_meta(variant):
    """The T5 families: full-size components on meta and a locally built T5 tokenizer, no download."""
    import torch

    from app.models import get_variant
    from app.weights import load_random

    pipe = load_random(get_variant(variant), torch.bfloat16, "meta")
    t5, tok = (pipe.text_encoder_2, pipe.tokenizer_2) if variant.startswith("flux") else (pipe.text_encoder, pipe.tokenizer)
    assert type(t5).__name__ == ("Gemma2Model" if variant.startswith("sana") else "T5EncoderModel")
    ids = tok("a lighthouse at dusk", padding="max_length", max_length=64, truncation=True).input_ids
    assert len(ids) == 64 and max(ids) < t5.config.vocab_size and 1 in ids  # </s> appended, padded with 0
