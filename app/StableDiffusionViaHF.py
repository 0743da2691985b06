#!/usr/bin/env python3
"""Diffusion image-generation workload for energy measurements. See ``--help`` and README.md.

Run as a script from anywhere (``python app/StableDiffusionViaHF.py ...``): the repository
root replaces this folder on ``sys.path`` so the ``app`` package, not its loose modules, is imported.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
sys.path.insert(0, os.path.dirname(_here))

from app.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
