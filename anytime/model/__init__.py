"""The detector: backbone, stacked pyramid networks (architecture as data), heads with exits."""

from anytime.model.retinanet import AnytimeRetinaNet, ExitModel, StageModel
from anytime.model.spec import ArchitectureError, CellSpec, PyramidSpec

__all__ = ["AnytimeRetinaNet", "ExitModel", "StageModel", "PyramidSpec", "CellSpec", "ArchitectureError"]
