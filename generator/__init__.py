"""cascadekit.generator: Stage C, training on precomputed latents, text-to-image."""

from cascadekit.generator.stage_c import StageC, StageCConfig  # noqa: E402
