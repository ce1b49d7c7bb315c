"""fastrel: fused relation-guided attention (RGSA, RGTR) for video person re-identification."""

from fastrel import reference
from fastrel.modules import RGSA, RGTR, RelationModule
from fastrel.ops import global_relation

__all__ = ["global_relation", "RelationModule", "RGSA", "RGTR", "reference"]
__version__ = "0.1.0"
