"""A tiny CLIP (BPE tokenizer, text and vision towers) for tests, built locally without downloads.

The tokenizer is a real CLIP-style byte-level BPE: the vocabulary is the 256 byte symbols, the same
with the end-of-word marker ``</w>``, the merges learnt here from a short built-in English text,
and the ``<|startoftext|>`` / ``<|endoftext|>`` specials — the layout of the original CLIP
``vocab.json`` / ``merges.txt``, just far smaller. Everything is deterministic.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import torch

CORPUS = """
a photograph of a cat sitting on a wooden table next to a window in the morning light.
a painting of a mountain landscape with a lake, trees and snow under a blue sky.
an astronaut riding a horse on the moon, digital art, highly detailed, sharp focus.
a close up portrait of an old man with a beard and glasses, black and white photo.
a red sports car parked on a city street at night with neon lights and rain.
a bowl of fresh fruit with apples, oranges, bananas and grapes on a kitchen counter.
the quick brown fox jumps over the lazy dog while the children play in the garden.
a small house in the forest, watercolor illustration, soft colors, warm evening sun.
two dogs running on the beach near the ocean waves, summer, happy, bright day.
an ancient castle on a hill surrounded by clouds, fantasy concept art, dramatic lighting.
a plate of pasta with tomato sauce and basil, food photography, shallow depth of field.
a robot reading a book in a library full of old books and wooden shelves.
a bird flying over a river in the autumn with orange and yellow leaves on the trees.
a modern living room with a white sofa, green plants and large windows, interior design.
a group of people walking in the park, street photography, candid, golden hour.
a cup of coffee and a croissant on a cafe table, morning, cozy, high quality photo.
"""

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_WORD = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")


def byte_symbols() -> dict[int, str]:
    """The reversible byte -> printable unicode symbol table used by byte-level BPE (GPT-2/CLIP)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def learn_merges(text: str, num_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE: repeatedly merge the most frequent adjacent pair (ties: smallest pair)."""
    sym = byte_symbols()
    words = Counter()
    for w in _WORD.findall(text.lower()):
        chars = [sym[b] for b in w.encode("utf-8")]
        words[tuple(chars[:-1]) + (chars[-1] + "</w>",)] += 1
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs = Counter()
        for w, n in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = Counter()
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges


def write_tokenizer(folder: str | Path, num_merges: int = 300, max_length: int = 77) -> Path:
    """Write ``vocab.json``, ``merges.txt``, ``tokenizer_config.json``, ``special_tokens_map.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = learn_merges(CORPUS, num_merges)
    base = list(byte_symbols().values())
    tokens = base + [s + "</w>" for s in base] + ["".join(m) for m in merges] + [SOT, EOT]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    specials = {"bos_token": SOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "do_lower_case": True,
              "clean_up_tokenization_spaces": False, **specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, sort_keys=True) + "\n")
    return folder


def write_text_encoder(folder: str | Path, vocab_size: int, bos: int, eos: int, seed: int = 0,
                       hidden: int = 32, projection: int = 32) -> Path:
    """A random ``CLIPTextModelWithProjection`` (hidden 32, projection 32, 77 positions, 2 layers)."""
    from cascadekit.codec.text import clip_classes

    CLIPTextConfig, CLIPTextModelWithProjection = clip_classes("CLIPTextConfig", "CLIPTextModelWithProjection")

    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         projection_dim=projection, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=77, hidden_act="gelu", bos_token_id=bos, eos_token_id=eos,
                         pad_token_id=eos)
    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(cfg).eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    return Path(folder)


def write_image_encoder(folder: str | Path, seed: int = 0, hidden: int = 32, projection: int = 24,
                        image_size: int = 32, patch_size: int = 8) -> Path:
    """A random ``CLIPVisionModelWithProjection`` (projection 24) plus its ``preprocessor_config.json``."""
    from cascadekit.codec.text import clip_classes

    CLIPVisionConfig, CLIPVisionModelWithProjection = clip_classes("CLIPVisionConfig", "CLIPVisionModelWithProjection")

    cfg = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, projection_dim=projection,
                           num_hidden_layers=2, num_attention_heads=4, image_size=image_size,
                           patch_size=patch_size, hidden_act="gelu")
    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(cfg).eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    proc = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True, "size": {"shortest_edge": image_size}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": True,
    }
    (Path(folder) / "preprocessor_config.json").write_text(json.dumps(proc, indent=2, sort_keys=True) + "\n")
    return Path(folder)
