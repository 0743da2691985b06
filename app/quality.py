"""CLIP score of generated images against their prompts, from local CLIP weights (``--clip-model PATH``).

Score = 100 * max(0, cos(image embedding, text embedding)), the definition torchmetrics uses.
Computed after the timed generation, so it never changes the measured time or energy. Weights
come from a local directory (``save_pretrained`` layout, safetensors); nothing is downloaded.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch


class ClipScorer:
    def __init__(self, path: str | Path, device: str = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(str(path), use_safetensors=True).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(str(path))
        self.device = device

    @torch.inference_mode()
    def score(self, images: list, prompts: list[str]) -> list[float]:
        inputs = self.processor(text=prompts, images=images, return_tensors="pt", padding=True, truncation=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        out = self.model(**inputs)
        img = torch.nn.functional.normalize(out.image_embeds, dim=-1)
        txt = torch.nn.functional.normalize(out.text_embeds, dim=-1)
        return (100 * (img * txt).sum(-1)).clamp(min=0).tolist()


@functools.lru_cache(maxsize=2)
def clip_scorer(path: str) -> ClipScorer:
    """One scorer per CLIP directory per process: suites score every run, and loading CLIP costs more than scoring."""
    return ClipScorer(path)


def check_clip_path(path: str) -> str | None:
    """None when ``path`` looks like a saved CLIP model directory, else what is wrong."""
    p = Path(path)
    if not p.is_dir():
        return "no such directory (a local CLIP model saved with save_pretrained)"
    if not (p / "config.json").exists():
        return "holds no config.json: not a saved CLIP model"
    return None


def build_tiny_clip(path: str | Path) -> Path:
    """A random few-MB CLIP (text + vision towers, tokenizer, image processor) saved to ``path``, for tests."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from . import tokenizers_local as toks

    path = Path(path)
    torch.manual_seed(0)
    text = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
            "max_position_embeddings": 77, "vocab_size": toks.clip_vocab_size(), "eos_token_id": toks.clip_eos_id(),
            "bos_token_id": toks.clip_vocab_size() - 2, "pad_token_id": toks.clip_eos_id()}
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 32, "patch_size": 8}
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(path, safe_serialization=True)
    tok = toks.load_clip_tokenizer(toks.write_clip_tokenizer(path / "_tok"))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}), tokenizer=tok)
    processor.save_pretrained(path)
    return path
