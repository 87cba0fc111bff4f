"""``--stage-b-weights RUN_OR_FILE [--ema]`` for reconstruct / evaluate / sample, and evaluate's ``--compare``.

The fine-tuned Stage B comes from :mod:`cascadekit.generator.stage_b_weights`; ``evaluate --compare`` measures
the base decoder (from ``--weights``) and the fine-tuned one on the same images and seeds
(:mod:`cascadekit.metrics.compare`).
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from cascadekit.cli.out_folder import COMPARE_DECODERS


def stage_b_weight_options(f):
    """Adds ``--stage-b-weights`` (and ``--compare`` with ``compare=True`` callers; see :func:`compare_option`)."""
    return click.option(
        "--stage-b-weights", "stage_b_weights", default=None, type=click.Path(exists=True),
        help="A fine-tuned Stage B instead of the one in --weights: a Stage B training run (its latest checkpoint), "
             "RUN/checkpoints/step_N, or a Stage B .safetensors file (same preset as --stage-b).")(f)


def ema_option(f):
    return click.option("--ema", is_flag=True,
                        help="With --stage-b-weights on a training run/checkpoint: use its EMA weights.")(f)


def compare_option(f):
    return click.option("--compare", is_flag=True,
                        help="With --stage-b-weights: evaluate the base decoder (--weights) AND the fine-tuned one on "
                             "the same images and seeds; one report with per-metric deltas, a per-image table and "
                             "grids with both reconstructions (each decoder's own report in base/ and finetuned/).")(f)


def check_stage_b_flags(stage_b_weights, ema: bool, compare: bool = False) -> None:
    """Usage errors before any work: --ema / --compare without --stage-b-weights."""
    if ema and stage_b_weights is None:
        raise click.UsageError("--ema needs --stage-b-weights pointing at a training run or checkpoint")
    if compare and stage_b_weights is None:
        raise click.UsageError("--compare needs --stage-b-weights (the fine-tuned decoder to compare with --weights)")


def apply_stage_b_weights(codec, stage_b_weights, ema: bool) -> Path | None:
    """Put the fine-tuned Stage B into ``codec`` (no-op without ``--stage-b-weights``); says which file."""
    if stage_b_weights is None:
        return None
    from cascadekit.generator.stage_b_weights import use_stage_b_weights

    f = use_stage_b_weights(codec, stage_b_weights, ema)
    click.echo(f"Stage B weights: {f}", err=True)
    return f


def evaluate_decoders(codec, stage_b_weights, ema: bool, compare: bool, items, reconstruct, out, **kw) -> dict:
    """``metrics.evaluate.evaluate`` with the fine-tuned Stage B, or (``compare``) base and fine-tuned side by side.

    ``reconstruct`` uses ``codec`` (its ``stage_b`` at call time); for the comparison each decoder's calls run
    with its Stage B in place. Returns the fine-tuned decoder's metrics.json dict (+ ``comparison``)."""
    from cascadekit.metrics.evaluate import evaluate

    if not compare:
        f = apply_stage_b_weights(codec, stage_b_weights, ema)
        if f is not None:
            kw["settings"] = {**kw.get("settings", {}), "stage_b_weights": str(f), "codec": codec.identity()}
        return evaluate(items, reconstruct, out, **kw)
    from cascadekit.generator.stage_b_weights import fine_tuned_stage_b
    from cascadekit.metrics.compare import compare as run_compare
    from cascadekit.metrics.evaluate import _call_reconstruct

    base = codec.stage_b
    tuned, f = fine_tuned_stage_b(base, stage_b_weights, ema)

    def with_stage_b(module):
        def call(x, keys, seed):
            codec.stage_b = module
            try:
                return _call_reconstruct(reconstruct, x, keys, seed)
            finally:
                codec.stage_b = base
        return call

    base_label, tuned_label = COMPARE_DECODERS  # the folder names cli/out_folder.py knows
    kw["settings"] = {**kw.get("settings", {}), "stage_b_weights": {base_label: "--weights", tuned_label: str(f)}}
    summary = run_compare(items, {base_label: with_stage_b(base), tuned_label: with_stage_b(tuned)}, out, **kw)
    for m, d in summary["delta_vs_baseline"][tuned_label].items():
        if d is not None:
            click.echo(f"{m.upper():6s} fine-tuned - base: {d:+.4f}")
    result = json.loads((Path(out) / tuned_label / "metrics.json").read_text())
    result["comparison"] = summary
    return result
