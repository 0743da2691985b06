"""Compute profile: FLOPs on the meta device against published counts; metrics carry FLOPs per image."""

from __future__ import annotations

import json

import pytest

from app.cli import main
from app.flops import _arch_configs, profile_configs, variant_table
from app.models import get_variant


def test_sd15_unet_matches_published_macs():
    cfg = _arch_configs(get_variant("sd-v1.5"))
    unet = next(c for c in profile_configs({"unet": cfg["unet"], "vae": cfg["vae"]}, "sd1", 512, 512, 1, 0.0)
                if c.component == "unet")
    assert (unet.flops_per_call - unet.attention_flops_per_call) / 2 == pytest.approx(339e9, rel=0.02)  # thop/fvcore
    assert unet.flops_per_call / 2 == pytest.approx(402e9, rel=0.02)                                    # with attention
    assert unet.params == 859_520_964


def test_guidance_doubles_the_denoiser_and_steps_multiply():
    v = get_variant("sd-v1.5")
    no_cfg = {r["component"]: r for r in variant_table(v, 256, 256, 10, 0.0)}
    cfg = {r["component"]: r for r in variant_table(v, 256, 256, 10, 7.5)}
    assert cfg["unet"]["flops_per_call"] == pytest.approx(2 * no_cfg["unet"]["flops_per_call"])
    assert cfg["unet"]["calls_per_image"] == 10 and cfg["text_encoder"]["calls_per_image"] == 2
    assert cfg["vae_decoder"]["flops_per_image"] == no_cfg["vae_decoder"]["flops_per_image"]


@pytest.mark.parametrize("variant", ["sdxl", "sd3-medium", "sana-600m"])
def test_other_families_are_counted(variant):
    rows = variant_table(get_variant(variant), 256, 256, 2, None)
    assert {r["component"] for r in rows} >= {"vae_decoder", "text_encoder"}
    assert all(r["flops_per_call"] > 0 for r in rows)


def test_metrics_carry_flops_and_achieved_tflops(tmp_path):
    m = tmp_path / "m.json"
    assert main(["--weights", "tiny", "--height", "64", "--width", "64", "--steps", "2", "--no-save-images", "-q",
                 "--output-dir", str(tmp_path), "--export-metrics", str(m)]) == 0
    data = json.loads(m.read_text())
    assert data["flops_per_image"] > 0 and data["achieved_tflops"] > 0


def test_profile_compute_flag(capsys):
    assert main(["--profile-compute", "--height", "512", "--width", "512", "--steps", "25"]) == 0
    out = capsys.readouterr().out
    assert "unet" in out and "vae_decoder" in out and "TFLOPs per image" in out


@pytest.mark.parametrize(("argv", "named"), [(["--variant", "sd15"], "--variant: unknown model variant 'sd15'"),
                                             (["--variant", "sd-v1.5", "--height", "0"], "--height: 0")])
def test_flops_cli_bad_input_is_one_line_exit_2(argv, named, capsys):
    from app.flops import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and named in err and len(err.strip().splitlines()) == 1
