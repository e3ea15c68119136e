"""The detector: backbone, stacked pyramid networks (architecture as data), heads with exits."""

from anytime.model.retinanet import AnytimeRetinaNet, ExitModel, FeaturesModel, HeadModel
from anytime.model.spec import ArchitectureError, CellSpec, PyramidSpec

__all__ = ["AnytimeRetinaNet", "ExitModel", "FeaturesModel", "HeadModel", "PyramidSpec", "CellSpec", "ArchitectureError"]
