"""cascadekit.codec: Stage A, the EfficientNet encoder, Stage B, the previewer and the shared diffusion core."""
