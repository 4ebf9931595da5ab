"""Converters from the reference implementations' checkpoints into swtasks state dicts."""

from .shiftwise_official import (
    SOURCE,
    convert_checkpoint_file,
    convert_shiftwise_official,
    load_reference_checkpoint,
    reference_tables,
)

SOURCES = (SOURCE,)

__all__ = [
    "SOURCES",
    "convert_checkpoint_file",
    "convert_shiftwise_official",
    "load_reference_checkpoint",
    "reference_tables",
]
