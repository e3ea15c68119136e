"""The detector: backbone, stacked pyramid networks (architecture as data), heads with exits.

The names below load on first use (``anytime.lazy``): ``spec`` and ``cli`` are plain Python that the ``anytime``
command imports to build its parser, while ``retinanet`` imports torch.
"""

from typing import TYPE_CHECKING

from anytime.lazy import lazy_exports

__all__ = ["AnytimeRetinaNet", "ExitModel", "FeaturesModel", "HeadModel", "PyramidSpec", "CellSpec", "ArchitectureError"]
__getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(["AnytimeRetinaNet", "ExitModel", "FeaturesModel", "HeadModel"], "anytime.model.retinanet"),
    **dict.fromkeys(["PyramidSpec", "CellSpec", "ArchitectureError"], "anytime.model.spec"),
})

if TYPE_CHECKING:
    from anytime.model.retinanet import AnytimeRetinaNet, ExitModel, FeaturesModel, HeadModel
    from anytime.model.spec import ArchitectureError, CellSpec, PyramidSpec
