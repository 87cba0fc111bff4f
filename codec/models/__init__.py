"""Stable Cascade network modules: building blocks, Stage A, EfficientNet encoder, Previewer, Stage B."""
