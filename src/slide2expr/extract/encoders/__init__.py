"""Tile encoders: a registry of pretrained networks that embed image tiles.

>>> from slide2expr.extract.encoders import get_encoder
>>> enc = get_encoder("efficientnet_lite0")        # doctest: +SKIP
>>> enc.embed_dim, enc.preprocessing.input_px       # doctest: +SKIP
(1280, 224)
"""

from slide2expr.extract.encoders.registry import (
    encoder_names,
    get_encoder,
    get_spec,
    list_encoders,
    register,
)
from slide2expr.extract.encoders.specs import (
    RANDOM_INIT,
    Encoder,
    EncoderInfo,
    EncoderSpec,
    Preprocessing,
)
from slide2expr.extract.encoders.weights import load_into, load_state_dict_file
from slide2expr.hashing import sha256_file
from slide2expr.keys import DEFAULT_ENCODER

__all__ = [
    "DEFAULT_ENCODER",
    "RANDOM_INIT",
    "Encoder",
    "EncoderInfo",
    "EncoderSpec",
    "Preprocessing",
    "encoder_names",
    "get_encoder",
    "get_spec",
    "list_encoders",
    "load_into",
    "load_state_dict_file",
    "register",
    "sha256_file",
]
