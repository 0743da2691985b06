"""A small HTTP image service around the app's pipeline (Flask), for the harness and for users.

    python -m app.serve --model-variant sd-v1.5 --weights tiny --port 8765
    curl -s -X POST localhost:8765/generate -H 'Content-Type: application/json' \\
         -d '{"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 4}' > cat.png

``POST /generate`` takes the harness's JSON fields and answers ``image/png`` for one image, or
``{"images": [base64 PNG, ...], "latency_s": ...}`` for several. ``GET /health`` says what is loaded.
Generations run one at a time (a lock): the GPU runs one batch, requests queue. Binds to 127.0.0.1
unless told otherwise. Flask's built-in server is fine for benchmarks on one machine; put a WSGI
server (gunicorn, waitress) in front for anything else.
"""

from __future__ import annotations

import argparse
import sys
import time

from flask import Flask, Response, jsonify, request

from sd_energy_contract.errors import InputError


def create_app(generate, info: dict) -> Flask:
    """The service around ``generate(prompt, width, height, num_images, steps, guidance, seed=...)``,
    which raises ``InputError`` for a request the model cannot take (answered 400 with its message)."""
    app = Flask("sd-energy-serve")

    @app.get("/health")
    def health():
        return jsonify({"status": "ok", **info})

    @app.post("/generate")
    def generate_route():
        from .harness import b64_png, encode_png

        body = request.get_json(silent=True) or {}
        try:
            prompt = str(body["prompt"])
            width, height = int(body.get("width", 512)), int(body.get("height", 512))
            n = int(body.get("num_images", 1))
            steps = int(body.get("num_inference_steps", 25))
            guidance = float(body.get("guidance_scale", 7.5))
            seed = int(body.get("seed", 0))
        except (KeyError, TypeError, ValueError) as exc:
            return jsonify({"error": f"bad request: {exc}"}), 400
        t0 = time.perf_counter()
        try:
            images = generate(prompt, width, height, n, steps, guidance, seed=seed)
        except InputError as exc:
            return jsonify({"error": str(exc)}), 400
        latency = time.perf_counter() - t0
        if len(images) == 1:
            return Response(encode_png(images[0]), mimetype="image/png", headers={"X-Latency-S": f"{latency:.4f}"})
        return jsonify({"images": [b64_png(im) for im in images], "latency_s": latency})

    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-variant", default="sd-v1.5")
    ap.add_argument("--weights", default="auto", choices=["auto", "pretrained", "random", "tiny"])
    ap.add_argument("--scheduler", default=None)
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    a = ap.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    from .pipeline import ExecutionOptions, PipelineCache
    from .runner import GenerationRequest, check_inputs, load, request_generator
    from .timing import PhaseRecorder

    try:
        # Requests bring their own prompt, size, steps and guidance; the model and how it runs are fixed here.
        base, variant = check_inputs(GenerationRequest(
            model_variant=a.model_variant, weights=a.weights, scheduler=a.scheduler,
            execution=ExecutionOptions(device=a.device, dtype=a.dtype), save_images=False))
        recorder, cache = PhaseRecorder.from_env(a.device), PipelineCache()
        wl = load(base, variant, recorder, cache)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    info = {"model_variant": variant.key, "weights": wl.weights_source, "device": wl.device, "dtype": wl.dtype,
            "scheduler": wl.scheduler_class}
    app = create_app(request_generator(base, recorder, cache), info)
    print(f"serving {variant.key} ({wl.weights_source}, {wl.device}) on http://{a.host}:{a.port}/generate", flush=True)
    app.run(host=a.host, port=a.port, threaded=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
