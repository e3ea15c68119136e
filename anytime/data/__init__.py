"""Datasets: the synthetic benchmark (``synth``), a COCO-format loader (``coco``) and its transforms."""

from pathlib import Path

# Where the default benchmark lives, relative to the current working directory.
DEFAULT_DATA_DIR = Path("data/synth")
