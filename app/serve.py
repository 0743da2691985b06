"""A small HTTP image service around the app's pipeline (Flask), for the harness and for users.

    python -m app.serve --model-variant sd-v1.5 --weights tiny --port 8765
    curl -s -X POST localhost:8765/generate -H 'Content-Type: application/json' \\
         -d '{"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 4}' > cat.png

``POST /generate`` takes the harness's JSON fields and answers ``image/png`` for one image, or
``{"images": [base64 PNG, ...], "latency_s": ...}`` for several. ``GET /health`` says what is loaded.
A request the service refuses is JSON ``{"error": ..., "field": <name>}``: 400 for a field of the
wrong type, an unknown field or a value out of bounds (steps, size and seed from ``check_inputs``,
at most ``MAX_IMAGES_PER_REQUEST`` images), 413 for a body over ``MAX_BODY_BYTES``.
Generations run one at a time (a lock): the GPU runs one batch, requests queue; ``/health`` takes
no lock and answers while one runs (the server is threaded). Binds to 127.0.0.1
unless told otherwise. Flask's built-in server is fine for benchmarks on one machine; put a WSGI
server (gunicorn, waitress) in front for anything else.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import socket
import sys
import time
from collections.abc import Callable

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from sd_energy_contract.errors import InputError

MAX_BODY_BYTES = 1 << 20  # a request is a prompt and a few numbers: 1 MiB is generous (413 beyond)
MAX_IMAGES_PER_REQUEST = 16  # several images come back base64 in one JSON body; more is a batch job

# The request's fields: name -> (expected Python types, default). A default of None means required.
FIELDS: dict[str, tuple[tuple[type, ...], object]] = {
    "prompt": ((str,), None),
    "width": ((int,), 512),
    "height": ((int,), 512),
    "num_images": ((int,), 1),
    "num_inference_steps": ((int,), 25),
    "guidance_scale": ((int, float), 7.5),
    "seed": ((int,), 0),
}
# check_inputs names command-line options; the service answers with the request field instead.
OPTION_FIELDS = {"--prompt": "prompt", "--width": "width", "--height": "height", "--num-images": "num_images",
                 "--batch-size": "num_images", "--steps": "num_inference_steps", "--guidance-scale": "guidance_scale",
                 "--seed": "seed"}


class BadField(Exception):
    """A request field the service refuses: answered 400 ``{"error": message, "field": field}``."""

    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(message)
        self.field, self.message, self.status = field, message, status


def _type_name(types: tuple[type, ...]) -> str:
    return "a number" if float in types else "an integer" if int in types else "a string"


def parse_request(raw: bytes, max_images: int = MAX_IMAGES_PER_REQUEST) -> dict:
    """The body of ``POST /generate`` as checked, typed fields (defaults filled in), or ``BadField``.

    Strict on purpose: a string for a number, a list for the prompt, a float for an integer, a bool
    for anything numeric or an unknown field (a typo such as ``steps``) is refused, naming the field,
    rather than converted (``int("4.5")`` used to be a 400 without a field, ``str([...])`` a prompt).
    """
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadField("body", f"bad request: the body is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise BadField("body", f"bad request: the body must be a JSON object, not {type(body).__name__}")
    for name in body:
        if name not in FIELDS:
            close = [f for f in FIELDS if str(name) in f] or difflib.get_close_matches(str(name), FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise BadField(str(name), f"bad request: unknown field {name!r}{hint}; known: {', '.join(FIELDS)}")
    fields = {}
    for name, (types, default) in FIELDS.items():
        if name not in body:
            if default is None:
                raise BadField(name, f"bad request: {name!r} is required")
            fields[name] = default
            continue
        value = body[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise BadField(name, f"bad request: {name!r} must be {_type_name(types)}, not {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise BadField(name, f"bad request: {name!r} must be a finite number")
        fields[name] = value
    if not 1 <= fields["num_images"] <= max_images:
        raise BadField("num_images", f"bad request: 'num_images' must be between 1 and {max_images} per request")
    return fields


def create_app(generate: Callable[..., list], info: dict, max_images: int = MAX_IMAGES_PER_REQUEST) -> Flask:
    """The service around ``generate(prompt, width, height, num_images, steps, guidance, seed=...)``,
    which raises ``InputError`` for a request the model cannot take (steps, size and seed bounds come
    from ``check_inputs``, the one place they are defined). Every refusal is JSON naming the field.

    ``generate`` serialises generations itself (``request_generator`` holds a lock); ``/health``
    takes no lock, so it answers while a generation runs.
    """
    app = Flask("sd-energy-serve")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    @app.errorhandler(BadField)
    def bad_field(exc: BadField):
        return jsonify({"error": exc.message, "field": exc.field}), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        """413 (body over ``MAX_BODY_BYTES``), 404, 405... as JSON, like every other answer."""
        field = "body" if exc.code == 413 else None
        message = f"request body over {MAX_BODY_BYTES} bytes" if exc.code == 413 else exc.description
        return jsonify({"error": f"{exc.name}: {message}", "field": field}), exc.code

    @app.errorhandler(Exception)
    def internal_error(exc: Exception):
        """A failure inside generation: logged with its traceback, answered as one JSON line."""
        app.logger.exception("generation failed")
        return jsonify({"error": f"internal error: {type(exc).__name__}: {exc}", "field": None}), 500

    @app.get("/health")
    def health():
        return jsonify({"status": "ok", **info})

    @app.post("/generate")
    def generate_route():
        from .harness import b64_png, encode_png

        f = parse_request(request.get_data(cache=False), max_images)
        t0 = time.perf_counter()
        try:
            images = generate(f["prompt"], f["width"], f["height"], f["num_images"], f["num_inference_steps"],
                              f["guidance_scale"], seed=f["seed"])
        except InputError as exc:
            field = OPTION_FIELDS.get(exc.option, exc.option.lstrip("-").replace("-", "_"))
            return jsonify({"error": str(exc), "field": field}), 400
        latency = time.perf_counter() - t0
        if len(images) == 1:
            return Response(encode_png(images[0]), mimetype="image/png", headers={"X-Latency-S": f"{latency:.4f}"})
        return jsonify({"images": [b64_png(im) for im in images], "latency_s": latency})

    return app


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is ``InputError`` (one line, exit 2) rather than usage text."""

    def error(self, message: str):
        import re

        m = re.match(r"argument (\S+?)(?:/\S+)?: (.*)", message)
        if m:
            raise InputError(m.group(1), None, m.group(2))
        m = re.match(r"unrecognized arguments: (\S+)", message)
        if m:
            raise InputError(m.group(1), None, "no such option")
        raise InputError("arguments", None, message)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except InputError as exc:
        print(f"error: {exc}".replace("\n", " "), file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    ap = _OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-variant", default="sd-v1.5")
    ap.add_argument("--weights", default="auto", choices=["auto", "pretrained", "random", "tiny"])
    ap.add_argument("--scheduler", default=None)
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    a = ap.parse_args(argv)
    if not 0 <= a.port <= 65535:
        raise InputError("--port", a.port, "must be between 0 and 65535")
    _check_port(a.host, a.port)  # before the model loads: a busy port must not cost a minute of loading
    import warnings

    warnings.filterwarnings("ignore")
    from .pipeline import ExecutionOptions, PipelineCache
    from .runner import GenerationRequest, check_inputs, load, request_generator
    from .timing import PhaseRecorder

    # Requests bring their own prompt, size, steps and guidance; the model and how it runs are fixed here.
    base, variant = check_inputs(GenerationRequest(
        model_variant=a.model_variant, weights=a.weights, scheduler=a.scheduler,
        execution=ExecutionOptions(device=a.device, dtype=a.dtype), save_images=False))
    recorder, cache = PhaseRecorder.from_env(a.device), PipelineCache()
    wl = load(base, variant, recorder, cache)
    info = {"model_variant": variant.key, "weights": wl.weights_source, "device": wl.device, "dtype": wl.dtype,
            "scheduler": wl.scheduler_class}
    app = create_app(request_generator(base, recorder, cache), info)
    print(f"serving {variant.key} ({wl.weights_source}, {wl.device}) on http://{a.host}:{a.port}/generate", flush=True)
    try:
        app.run(host=a.host, port=a.port, threaded=True)
    except OSError as exc:  # taken between the check and now
        raise InputError("--port", a.port, f"cannot listen on {a.host}:{a.port} ({exc.strerror or exc})") from None
    return 0


def _check_port(host: str, port: int) -> None:
    """Refuse a host/port this process cannot listen on (in use, not an address of this machine)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise InputError("--host", host, f"not an address to listen on ({exc.strerror or exc})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server sets it
        try:
            sock.bind(addr)
        except OSError as exc:
            raise InputError("--port", port, f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None


if __name__ == "__main__":
    raise SystemExit(main())
