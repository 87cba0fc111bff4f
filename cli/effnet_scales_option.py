"""``--effnet-scales LIST`` of ``encode`` and ``add-controls``: Stage B's stored EfficientNet scales."""
from __future__ import annotations

import click


def _scales(ctx, param, value):
    """Checked when parsed (0, > 1, repeats, not numbers: a usage error before any weights load)."""
    if value is None:
        return ()
    from cascadekit.codec.errors import InputError
    from cascadekit.datasets.effnet_scales import parse_effnet_scales

    try:
        return parse_effnet_scales(value)
    except InputError as e:
        raise click.BadParameter(str(e), param_hint="--effnet-scales") from None


def effnet_scales_option(f):
    """Adds ``--effnet-scales`` (parsed into an ascending tuple of factors; () when not given)."""
    return click.option(
        "--effnet-scales", "effnet_scales", default=None, callback=_scales, metavar="LIST",
        help="Stage B: store the EfficientNet latents of the crop nearest-downscaled by each factor in (0, 1], "
             "comma-separated, e.g. 0.5,0.75,1.0 (sides snapped down to multiples of 32, as the official train_b; "
             "the trainer draws one per sample). add-controls replaces scales stored with other factors. "
             "See docs/dataset_format.md.")(f)
