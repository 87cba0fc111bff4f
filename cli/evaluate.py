"""`cascadekit evaluate`: how faithful is the codec on these images? PSNR/SSIM/LPIPS/FID + an HTML report."""
from __future__ import annotations

from pathlib import Path

import click

from cascadekit.cli.common import reports_user_errors
from cascadekit.cli.out_folder import EVALUATE, check_out_folder, remove_outputs
from cascadekit.cli.params import BATCH, COUNT, DEVICE, FINITE, NON_NEGATIVE, OUT_FOLDER, SEED, STEPS, PixelSide, STORE_IN
from cascadekit.cli.stage_b_options import check_stage_b_flags, compare_option, ema_option, stage_b_weight_options


def _metric_names(ctx, param, value):
    """--metrics -> validated names, refused at parse time naming the flag."""
    from cascadekit.metrics.errors import MetricInputError
    from cascadekit.metrics.names import parse_metrics

    try:
        return ",".join(parse_metrics(value))
    except MetricInputError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None


@click.command("evaluate")
@click.argument("images", nargs=-1, type=click.Path(exists=True))
@click.option("--out", "out", required=True, type=OUT_FOLDER,
              help="Report folder (created). A folder with an earlier report needs --overwrite.")
@click.option("--overwrite", is_flag=True, help="Remove the outputs of an earlier `evaluate` run in --out first.")
@click.option("--weights", default=None,
              help="Codec weights folder / diffusers snapshot / hub id. Default: $CASCADEKIT_WEIGHTS or "
                   "~/.cache/cascadekit/weights, else the built-in TINY RANDOM weights (clearly labelled).")
@click.option("--store", default=None, type=STORE_IN,
              help="Decode the latents of this store (cascadekit encode) instead of encoding; images are matched "
                   "by key (IMAGES, or the store's recorded source files when IMAGES is empty) and prepared as "
                   "the store's preprocessing did.")
@click.option("--stage-b", "stage_b", default="lite", show_default=True, type=click.Choice(["lite", "big"]))
@click.option("--steps", default=10, show_default=True, type=STEPS, help="Stage B sampling steps.")
@click.option("--guidance", default=1.1, show_default=True, type=FINITE, help="Stage B classifier-free guidance.")
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="0 <= seed < 2**63. Decoding is stochastic: batch seed = SEED + index of the batch's first image (in the report).")
@click.option("--metrics", "metrics", default="psnr,ssim,lpips,fid", show_default=True, callback=_metric_names,
              help="Comma-separated subset of psnr,ssim,lpips,fid.")
@click.option("--lpips-net", default="alex", show_default=True, type=click.Choice(["alex", "vgg"]))
@click.option("--weights-dir", default=None, type=click.Path(file_okay=False),
              help="Folder with the metric backbones (alexnet-owt-7be5be79.pth, vgg16-397923af.pth, "
                   "weights-inception-2015-12-05-6726825d.pth); default: torch's hub cache. Never downloaded.")
@click.option("--size", default=1024, show_default=True, type=PixelSide(multiple=64),
              help="Encode mode, a multiple of 64: resize each image's short side to this, then centre-crop to "
                   "multiples of 64.")
@click.option("--encoder-resolution", default=768, show_default=True, type=PixelSide(minimum=32),
              help="Short side the effnet sees (official 768: 1024² -> 24×24 latents).")
@click.option("--batch-size", default=4, show_default=True, type=BATCH)
@click.option("--max-images", default=None, type=COUNT, help="Evaluate at most N images.")
@click.option("--grid-samples", default=8, show_default=True, type=NON_NEGATIVE,
              help="Images shown as original | reconstruction | error grids.")
@click.option("--device", default=None, type=DEVICE, help="cpu, cuda, cuda:1 ... (default: cuda if available).")
@click.option("--dtype", default=None, type=click.Choice(["fp32", "bf16", "fp16"]),
              help="Codec precision (default: bf16 on CUDA, fp32 on CPU). Metrics always run in float32/64.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--offline", is_flag=True,
              help="Never download a missing metric backbone (also CASCADEKIT_OFFLINE=1 / HF_HUB_OFFLINE=1).")
@stage_b_weight_options
@ema_option
@compare_option
@reports_user_errors
def evaluate(images, out, overwrite, weights, store, stage_b, steps, guidance, seed, metrics, lpips_net, weights_dir,
             size, encoder_resolution, batch_size, max_images, grid_samples, device, dtype, quiet, offline,
             stage_b_weights=None, ema=False, compare=False):
    """Reconstruct IMAGES... (files or folders) with the codec and measure PSNR, SSIM, LPIPS and FID.
    Writes metrics.json, per_image.csv, grids/ and index.html into --out (with --compare: each decoder's
    report in base/ and finetuned/, compare.json, compare_per_image.csv, compare_grids/, index.html and a
    metrics.json with both decoders and the deltas). Unreadable images are skipped and listed. With neither IMAGES nor --store, scikit-image's sample photographs are used."""
    check_stage_b_flags(stage_b_weights, ema, compare)
    earlier = check_out_folder(out, EVALUATE, overwrite)
    metrics, skipped_metrics = _usable_metrics(metrics, lpips_net, weights_dir, offline)
    for name, why in skipped_metrics.items():
        click.echo(f"NOTE: {name} skipped: {why}", err=True)
    result = _run(images, out, earlier, weights, store, stage_b, steps, guidance, seed, metrics, lpips_net,
                  weights_dir, size, encoder_resolution, batch_size, max_images, grid_samples, device, dtype, quiet,
                  skipped_metrics=skipped_metrics, stage_b_choice=(stage_b_weights, ema, compare))
    agg = result["aggregate"]
    for name, v in agg.items():
        if isinstance(v, dict):
            mean = v["mean"]
            click.echo(f"{name.upper():6s} mean {mean:.4f} over {v['count']} images" if mean is not None
                       else f"{name.upper():6s} -")
        else:
            click.echo(f"{name.upper():6s} {v:.4f}" if v is not None else f"{name.upper():6s} - "
                       f"({result['settings'].get('fid_note')})")
    if result["skipped"]:
        click.echo(f"skipped {len(result['skipped'])} input(s) (listed in {out}/metrics.json):", err=True)
        for s in result["skipped"][:10]:
            click.echo(f"  {s['key']}: {s['reason']}", err=True)
    click.echo(f"report: {Path(out) / 'index.html'}")
    if result.get("notice"):
        click.echo(f"NOTE: {result['notice']}", err=True)


def _usable_metrics(metrics: str, lpips_net, weights_dir, offline) -> tuple[str, dict[str, str]]:
    """The metrics to compute and {skipped metric: why}. Each backbone is downloaded (verified) when missing and
    allowed; one that cannot be had stops an explicit --metrics with its error, while the default list goes on
    without that metric (the reason is printed and recorded in metrics.json)."""
    from click.core import ParameterSource

    from cascadekit.metrics.download import DownloadSettings
    from cascadekit.metrics.errors import MissingWeightsError
    from cascadekit.metrics.names import parse_metrics
    from cascadekit.metrics.weights import available_metrics

    kept, skipped = available_metrics(parse_metrics(metrics), lpips_net=lpips_net, weights_dir=weights_dir,
                                      download=DownloadSettings.from_env(offline=offline))
    if skipped and click.get_current_context().get_parameter_source("metrics") is not ParameterSource.DEFAULT:
        raise MissingWeightsError(next(iter(skipped.values())))
    return ",".join(kept), skipped


def _expand(paths, out, skipped: list) -> list[tuple[str, Path]]:
    """(key, path) for IMAGES: a folder gives every image under it (key = relative path without the last
    suffix, as `cascadekit encode` keys folder samples; the report folder `out` is never scanned; a second
    image of one stem is appended to `skipped`, as encode skips it); a file gives key = its stem."""
    from cascadekit.metrics.images import iter_folder

    items, dups = [], []
    for p in map(Path, paths):
        if p.is_dir():
            items.extend(iter_folder(p, exclude=(out,), duplicates=dups))
        else:
            items.append((p.stem, p))
    skipped += [{"key": k, "reason": f"{p}: an image of the same stem sorts first in its folder and has this key "
                 "(as in cascadekit encode); rename one to evaluate both"} for k, p in dups]
    return items


def _mode_note(path) -> str | None:
    """'converted from L' etc. when the file is not RGB (the codec's loader converts it to RGB). Opened through the
    regular-file guard (a FIFO or device is never opened)."""
    from PIL import Image

    from cascadekit.codec.input_files import DEFAULT_MAX_INPUT_BYTES, open_regular

    try:
        with open_regular(path, DEFAULT_MAX_INPUT_BYTES) as f, Image.open(f) as im:
            return None if im.mode == "RGB" else f"converted from {im.mode} to RGB"
    except Exception:  # noqa: BLE001 - the loader itself reports unreadable files
        return None


def _run(images, out, earlier, weights, store, stage_b, steps, guidance, seed, metrics, lpips_net, weights_dir,
         size, encoder_resolution, batch_size, max_images, grid_samples, device, dtype, quiet, skipped_metrics=None,
         stage_b_choice=(None, False, False)):
    import warnings

    from cascadekit.cli.common import default_dtype, pick_device, pick_weights
    from cascadekit.codec.codec import Codec
    from cascadekit.codec.defaults import sample_image_paths
    from cascadekit.metrics.evaluate import evaluate as run_evaluation
    from cascadekit.metrics.evaluate import check_weights, parse_metrics

    metric_names = parse_metrics(metrics)  # fail on a typo or a missing backbone before loading the codec
    check_weights(metric_names, lpips_net=lpips_net, weights_dir=weights_dir)
    remove_outputs(Path(out), earlier, EVALUATE)  # --overwrite: the earlier report goes once the checks passed
    dev = pick_device(device)
    dtype = default_dtype(dtype, dev)
    source, info, _ = pick_weights(weights, stage_b=stage_b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny-weights warning is replaced by the banner and the notice
        codec = Codec.from_pretrained(source, stage_b=stage_b, device=dev, dtype=dtype,
                                      encoder_resolution=encoder_resolution, previewer=False)
    notice = None
    if codec.tiny:
        notice = ("TINY RANDOM WEIGHTS: no official Stable Cascade weights were found, so these reconstructions "
                  "come from random networks and every number in this report is meaningless. Pass --weights.")
    decode_kw = {"steps": steps, "guidance": guidance}
    settings = {"codec_weights": info, "codec": codec.identity(), "steps": steps, "guidance": guidance,
                "mode": "store" if store else "encode"}
    if skipped_metrics:
        settings["skipped_metrics"] = skipped_metrics  # metric -> why it could not be computed
    if store:
        items, reconstruct, extra_skipped, store_info = _store_mode(store, images, codec, decode_kw, out)
        settings["store"] = store_info
    else:
        from cascadekit.codec.reconstruct_files import prepare_image

        extra_skipped = []
        pairs = _expand(images, out, extra_skipped) if images else [(p.stem, p) for p in sample_image_paths()]
        settings["size"] = size
        items = [(k, (lambda p=p: (prepare_image(p, size), _mode_note(p)))) for k, p in pairs]

        def reconstruct(x, seed):
            return codec.reconstruct(x, seed=seed, **decode_kw).float().cpu()

    from cascadekit.cli.stage_b_options import evaluate_decoders

    result = evaluate_decoders(codec, *stage_b_choice, items, reconstruct, out, seed=seed, metrics=metric_names,
                            batch_size=batch_size,
                            weights_dir=weights_dir, device=dev, lpips_net=lpips_net, grid_samples=grid_samples,
                            settings=settings, notice=notice, progress=not quiet, extra_skipped=extra_skipped,
                            max_images=max_images)
    return result


def _store_mode(store, images, codec, decode_kw, out):
    """Items and a reconstruct callable that decodes the store's latents for each key.

    Originals are prepared exactly as the store's builder prepared them (its recorded preprocessing), so
    the reconstruction is compared with the crop the encoder saw."""
    import numpy as np
    import torch

    from cascadekit.codec.errors import InputError
    from cascadekit.datasets.preprocess import PreprocessConfig, load_and_prepare
    from cascadekit.datasets.access import LatentStore

    st = LatentStore(store)
    root = st.root
    pre = dict(st.attrs.get("preprocess", {}))
    cfg = PreprocessConfig(**{k: pre[k] for k in ("resolution", "min_size", "max_pixels", "buckets", "max_input_bytes")
                              if k in pre})
    latents_of, sources, skipped = st.key_index(("latents",))  # key -> (group, row), the usable rows only
    if not latents_of:
        raise InputError(f"{store}: no encoded rows (status ok) to evaluate")

    if images:
        given = dict(_expand(images, out, skipped))
        pairs = [(k, given[k]) for k in given if k in latents_of]
        skipped += [{"key": k, "reason": "no latent with this key in the store"} for k in given if k not in latents_of]
        skipped += [{"key": k, "reason": "in the store but not among IMAGES"} for k in latents_of if k not in given]
    else:
        pairs = []
        for k in latents_of:
            src = sources[k]
            if "#" in src or not Path(src).is_file():
                skipped.append({"key": k, "reason": f"source {src!r} is not a readable local file; pass IMAGES"})
            else:
                pairs.append((k, Path(src)))

    def prepare(path):
        arr, _ = load_and_prepare(str(path), cfg)
        return torch.from_numpy(arr).float().div_(255.0), _mode_note(path)

    items = [(k, (lambda p=p: prepare(p))) for k, p in pairs]

    caches = {gv.path: gv.cache("latents", keep=1) for gv in st.groups}  # rows come mostly in store order

    def latent(k):
        gp, i = latents_of[k]
        return torch.from_numpy(caches[gp].rows([i])[0].astype(np.float32))

    def reconstruct(x, keys, seed):
        z = torch.stack([latent(k) for k in keys])
        return codec.decode(z, seed=seed, size=tuple(x.shape[-2:]), **decode_kw).float().cpu()

    info = {"path": str(store), "preprocess": pre, "encoder": root.attrs.get("encoder"),
            "rows_ok": len(latents_of)}
    stored = ((root.attrs.get("encoder") or {}).get("checkpoints") or {}).get("effnet", {}).get("sha256")
    ours = (codec.identity().get("checkpoints") or {}).get("effnet", {}).get("sha256")
    if stored and ours and stored != ours:
        info["warning"] = "the store was encoded with another effnet checkpoint than this codec's"
    return items, reconstruct, skipped, info
