"""Stage B fine-tuning end to end: encode a store with Stage A latents, train, compare decoders with evaluate.

What evaluate measures here is Stage B's one-step reconstruction: the image's Stage A latents noised to t = 0.5
(fixed noise per batch seed), denoised by Stage B in one step (x0 = (x_t - b·ε̂) / a) and decoded by Stage A.
150 updates are far too few for full 10-step sampling (both decoders sample noise, PSNR ~5 dB), so this test
measures the learnt denoiser; tests/test_stage_b_evaluate.py measures the released sampling after 1500 updates.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from _tiny_weights import tiny_weights_dir
from stage_b_helpers import SMALL_B, photo_folder, small_codec, weights_with_mean_pool_stage_a


def one_step(codec, t: float = 0.5):
    """reconstruct(x, seed): Stage A latents noised to ``t`` (pyramid noise), denoised by Stage B in one step, decoded by Stage A."""
    from cascadekit.codec.diffusion.gdf import GDF
    from cascadekit.generator.pyramid_noise import pyramid_noise

    gdf = GDF.official()

    def reconstruct(x, seed):
        with torch.no_grad():
            x0 = codec.encode_stage_a(x)
            g = torch.Generator().manual_seed(seed)
            eps = pyramid_noise(torch.randn(x0.shape, generator=g), g)  # the noise Stage B is trained on
            d = gdf.diffuse(x0, torch.full((x0.shape[0],), t), eps)
            pred = codec.stage_b(d.x_t, d.noise_cond, effnet=codec.encode(x), clip=codec.empty_clip.expand(len(x), -1, -1))
            a, b = (v.reshape(-1, 1, 1, 1) for v in gdf.scalers(d.logsnr))  # x_t = a·x0 + b·ε
            return codec.decode_stage_a((d.x_t - b * pred) / a)

    return reconstruct


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return weights_with_mean_pool_stage_a(tiny_weights_dir(tmp_path_factory), tmp_path_factory.mktemp("w_meanpool"))


def test_tiny_stage_b_overfits_and_evaluate_sees_it(weights, tmp_path):
    from cascadekit.codec.reconstruct_files import prepare_image
    from cascadekit.datasets.builder import build_latent_dataset
    from cascadekit.generator.tasks.stage_b_config import StageBTrainConfig
    from cascadekit.generator.train_stage_b import train_stage_b
    from cascadekit.metrics.compare import compare

    torch.set_num_threads(1)
    imgs = photo_folder(tmp_path / "imgs")
    base = small_codec(weights)
    base_file = tmp_path / "base_stage_b.safetensors"
    save_file(base.stage_b.state_dict(), str(base_file))
    build_latent_dataset([str(imgs)], tmp_path / "s.zarr", base, resolution=32, dtype="float32",
                         spaces=("semantic", "stage_a"), batch_size=4, num_workers=0, progress=False, chunk_rows=4)
    cfg = StageBTrainConfig.from_dict(dict(preset="tiny", steps=150, batch_size=4, save_every=150, lr=3e-3,
                                           log_every=50))
    res = train_stage_b(tmp_path / "s.zarr", cfg, tmp_path / "run", init=base_file, model_overrides=SMALL_B,
                        empty_pooled=torch.zeros(1, 1, 32), log=lambda m: None)
    losses = [h["loss"] for h in res.history]
    first, last = sum(losses[:15]) / 15, sum(losses[-15:]) / 15
    assert last < 0.75 * first, (first, last)

    tuned = small_codec(weights, res.last_checkpoint / cfg.weights_name)
    items = [(p.stem, (lambda p=p: prepare_image(p, 32))) for p in sorted(imgs.iterdir())]
    summary = compare(items, {"base": one_step(base), "finetuned": one_step(tuned)},
                      tmp_path / "cmp", metrics=["psnr", "ssim"], progress=False)
    delta = summary["delta_vs_baseline"]["finetuned"]["psnr"]
    assert delta > 0.6, summary["aggregate"]  # measured +1.2 dB after 150 updates
    assert summary["n_images_compared"] == 4
    table = (tmp_path / "cmp" / "compare_per_image.csv").read_text().splitlines()
    header = table[0].split(",")
    rises = [float(r.split(",")[header.index("psnr_delta_finetuned")]) > 0 for r in table[1:]]
    assert sum(rises) >= 3, table
    assert table[0].split(",")[:3] == ["key", "psnr_base", "psnr_finetuned"] and len(table) == 5
    assert len(list((tmp_path / "cmp" / "compare_grids").iterdir())) == 4
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["baseline"] == "base"
    assert (tmp_path / "cmp" / "base" / "index.html").is_file() and (tmp_path / "cmp" / "index.html").is_file()
