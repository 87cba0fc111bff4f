"""cascadekit.codec: Stage A, the EfficientNet encoder, Stage B, the previewer and the shared diffusion core."""

from cascadekit.codec.models import (  # noqa: E402
    EfficientNetEncoder,
    EfficientNetEncoderConfig,
    Previewer,
    PreviewerConfig,
    StageA,
    StageAConfig,
    StageB,
    StageBConfig,
)
