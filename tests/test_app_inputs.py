"""Every bad input is one line naming the option and value, exit code 2, no traceback, nothing written.

The table of one-option cases is tests/test_bad_inputs_app.py; these need their own set-up."""

from __future__ import annotations

from app.cli import main

SMALL = ["--height", "64", "--width", "64", "--steps", "2", "--no-save-images", "-q"]


def run(capsys, args):
    rc = main(args)
    err = capsys.readouterr().err
    return rc, err


def test_unwritable_output_dir(capsys, tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    target = locked / "sub"
    import os
    if os.access(locked, os.W_OK):  # root ignores permissions: use a path under a file instead
        blocker = tmp_path / "file"
        blocker.write_text("x")
        target = blocker / "sub"
    rc, err = run(capsys, ["--output-dir", str(target)])
    assert rc == 2 and "--output-dir" in err and str(target) in err


def test_config_file_unknown_key_suggests(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stepz: 3\n")
    rc, err = run(capsys, ["--config", str(cfg)])
    assert rc == 2 and "unknown key 'stepz' (did you mean 'steps'?)" in err


def test_config_file_unreadable(capsys, tmp_path):
    rc, err = run(capsys, ["--config", str(tmp_path / "missing.yaml")])
    assert rc == 2 and "--config" in err and "cannot read" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    rc, err = run(capsys, ["--config", str(bad)])
    assert rc == 2 and "not valid YAML" in err


def test_pretrained_weights_unreachable_says_what_to_do(capsys, tmp_path):
    rc, err = run(capsys, ["--weights", "pretrained", "--custom-model", str(tmp_path / "nothing-here"), *SMALL])
    assert rc == 2
    assert "--weights pretrained" in err and "--weights random" in err and "--weights tiny" in err
    assert "Traceback" not in err


def test_refiner_init_image_missing_file(capsys, tmp_path):
    rc, err = run(capsys, ["--model-variant", "sdxl-refiner", "--init-image", str(tmp_path / "x.png")])
    assert rc == 2 and "--init-image" in err and "no such file" in err


def test_nothing_written_on_bad_input(capsys, tmp_path):
    out = tmp_path / "out"
    metrics = tmp_path / "m.json"
    rc, _ = run(capsys, ["--steps", "0", "--output-dir", str(out), "--export-metrics", str(metrics)])
    assert rc == 2 and not out.exists() and not metrics.exists()


def test_list_variants_and_schedulers(capsys):
    assert main(["--list-variants"]) == 0
    out = capsys.readouterr().out
    for key in ("sd-v1.4", "sd-v1.5", "sd-v2.0", "sd-v2.1", "sd-v2.1-base", "sdxl", "sdxl-refiner", "sd-turbo",
                "sdxl-turbo", "sdxl-lightning", "pixart-alpha", "pixart-sigma", "sd3-medium", "sana-600m",
                "flux.1-schnell", "flux.1-dev"):
        assert f"\n{key} " in "\n" + out
    assert main(["--list-schedulers"]) == 0
    out = capsys.readouterr().out
    for name in ("dpm++", "dpm++-karras", "dpm-sde", "euler", "euler-a", "ddim", "ddpm", "pndm", "lms", "heun",
                 "kdpm2", "kdpm2-a", "unipc", "deis", "lcm", "flow-euler"):
        assert out.startswith(name + " ") or f"\n{name} " in out
