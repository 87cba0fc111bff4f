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
from cascadekit.codec.codec import Codec, default_image_size  # noqa: E402
from cascadekit.codec.images import (  # noqa: E402
    ImageInputError,
    center_crop,
    imagenet_normalize,
    load_image,
    pil_to_tensor,
    resize_center_crop,
    resize_short_side,
    save_grid,
    tensor_to_pil,
    to_batch,
)
from cascadekit.codec.precision import check_finite, parse_dtype, stage_dtypes  # noqa: E402
from cascadekit.codec.errors import CascadeKitError, InputError, PrecisionError, WeightsError  # noqa: E402
from cascadekit.codec.weights.load import load_weights  # noqa: E402
from cascadekit.codec.weights.sources import resolve_source  # noqa: E402
