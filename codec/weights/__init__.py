"""Reading, converting and assigning checkpoint weights (official and diffusers formats).

``read_state_dict`` reads one file safely; ``load_weights`` returns official key names whatever the
format; ``resolve_source`` finds the files of every model in a folder / diffusers snapshot / hub id;
``build`` / ``load_into`` assign a state dict to a model created on the meta device;
``write_tiny_weights`` writes a labelled random tiny weight set for tests.
"""
from cascadekit.codec.weights.assign import build, check_state_dict, load_into
from cascadekit.codec.weights.io import read_state_dict, safetensors_header, sha256_file
from cascadekit.codec.weights.keys import detect_format, diffusers_to_official, official_to_diffusers, to_official
from cascadekit.codec.weights.load import diffusers_weights_file, load_weights
from cascadekit.codec.weights.sources import WeightSet, resolve_source
from cascadekit.codec.weights.tiny import write_tiny_weights

__all__ = [
    "build", "check_state_dict", "load_into",
    "read_state_dict", "safetensors_header", "sha256_file",
    "detect_format", "diffusers_to_official", "official_to_diffusers", "to_official",
    "diffusers_weights_file", "load_weights",
    "WeightSet", "resolve_source",
    "write_tiny_weights",
]
