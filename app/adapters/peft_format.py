"""The PEFT adapter layout, as this service reads and writes it: the config file
(peft_config.py) and the weights file (peft_tensors.py), each read strictly."""

from app.adapters.peft_config import CONFIG_FILE, NAME_RE, check_name, config_json, parse_config
from app.adapters.peft_tensors import (
    ACCEPTED_DTYPE_NAMES,
    ACCEPTED_DTYPES,
    KEY_PREFIX,
    WEIGHTS_FILE,
    build_adapter,
    check_header,
    expected_shapes,
    header_of,
    tensor_key,
)

__all__ = [
    "ACCEPTED_DTYPES",
    "ACCEPTED_DTYPE_NAMES",
    "CONFIG_FILE",
    "KEY_PREFIX",
    "NAME_RE",
    "WEIGHTS_FILE",
    "build_adapter",
    "check_header",
    "check_name",
    "config_json",
    "expected_shapes",
    "header_of",
    "parse_config",
    "tensor_key",
]
