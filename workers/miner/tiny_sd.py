"""tiny-sd: a Stable Diffusion 1.5-shaped pipeline with fixed random weights, built here from config.

It lets CPU miners, the demo and the tests run the real image job path (text encoder, UNet denoising loop,
VAE decode, PNG) offline in about a second. Every component is initialised from ``torch.manual_seed(0)``
inside a forked RNG, so a rebuild on the same torch/diffusers gives byte-identical files; their sha256 go
to the catalog lock, which the miner checks before loading.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from heurist.catalog.lock import record_hashes
from workers.miner.model_files import hash_tree

SEED = 0
MAX_TOKENS = 77  # CLIP's context length, as in real SD1.5
TEXT_HIDDEN = 32

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,  # latent side for 64x64 images (vae_scale_factor 8)
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (128, 256),  # sized so 64x64 at 20 steps takes well under a second on 2 CPU cores
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": TEXT_HIDDEN,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
VAE_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": (32, 64, 64, 64),  # 4 blocks: 2**3 = 8x downsampling, like real SD
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "norm_num_groups": 32,
}
TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": TEXT_HIDDEN,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": MAX_TOKENS,
    "vocab_size": 1000,
    "bos_token_id": 512,
    "eos_token_id": 513,
    "pad_token_id": 513,
}
SCHEDULER_CONFIG: dict[str, Any] = {  # SD1.5's own scheduler settings
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "set_alpha_to_one": False,
}


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def tokenizer_vocab() -> dict[str, int]:
    """A byte-level CLIP vocabulary with no merges: 256 bytes, 256 word-final bytes, two specials."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}


def _write_tokenizer(dest: Path) -> None:
    """Write vocab.json/merges.txt and let CLIPTokenizer save its own files next to them."""
    from transformers import CLIPTokenizer

    raw = dest / "raw"
    raw.mkdir(parents=True)
    (raw / "vocab.json").write_text(json.dumps(tokenizer_vocab(), ensure_ascii=False, sort_keys=True))
    (raw / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(vocab=str(raw / "vocab.json"), merges=str(raw / "merges.txt"),
                              model_max_length=MAX_TOKENS)
    shutil.rmtree(raw)
    tokenizer.save_pretrained(dest)


def _seeded(build: Any, *args: Any, **kwargs: Any) -> Any:
    """Construct one component from ``torch.manual_seed(SEED)`` without touching the caller's RNG."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return build(*args, **kwargs).eval()


def _components(work: Path) -> dict[str, Any]:
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    _write_tokenizer(work / "tokenizer-src")
    return {
        "unet": _seeded(UNet2DConditionModel, **UNET_CONFIG),
        "vae": _seeded(AutoencoderKL, **VAE_CONFIG),
        "text_encoder": _seeded(CLIPTextModel, CLIPTextConfig(**TEXT_CONFIG)),
        "tokenizer": CLIPTokenizer.from_pretrained(work / "tokenizer-src"),
        "scheduler": PNDMScheduler(**SCHEDULER_CONFIG),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def build_tiny_sd(dest: Path) -> dict[str, str]:
    """Build tiny-sd into ``dest`` (replacing it) and record its hashes in the lock of ``dest.parent``.

    Returns ``{relative_path: sha256}`` of every file written; the lock entry is named ``dest.name``.
    """
    from diffusers import StableDiffusionPipeline

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmp:
        work = Path(tmp)
        pipe: Any = StableDiffusionPipeline(**_components(work))
        out = work / "pipeline"
        pipe.save_pretrained(out, safe_serialization=True)
        hashes = hash_tree(out)
        if dest.exists():
            shutil.rmtree(dest)
        try:
            out.rename(dest)
        except OSError:
            if not dest.is_dir():
                raise  # else a concurrent build won the race; builds are byte-identical, so keep its files
    record_hashes(dest.parent, dest.name, hashes)
    return hashes
