"""cascadekit.generator: Stage C, training on precomputed latents, text-to-image."""
