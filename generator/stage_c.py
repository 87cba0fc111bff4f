"""Stage C, the text-conditional prior, as the generator's public name.

The network itself lives beside the other official networks in :mod:`cascadekit.codec.models.stage_c`
(the codec package owns every official architecture, its checkpoints and its tiny test weights);
the generator trains and samples it.
"""
from cascadekit.codec.models.stage_c import StageC, StageCConfig, infer_preset

__all__ = ["StageC", "StageCConfig", "infer_preset"]
