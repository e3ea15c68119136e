"""A search's configuration: one JSON object (``anytime search --config FILE``), command-line flags on top.

```json
{"trials": 64, "workers": 2, "controller": "ppo", "seed": 0,
 "space": {"num_cells": 7, "levels": [3, 4, 5, 6, 7]},
 "proxy": {"preset": "cpu", "train": {"max_iters": 600}},
 "ppo": {"batch": 8}, "lstm": {"hidden": 100},
 "address": null, "cpus_per_trial": 1, "gpus_per_trial": 0, "max_retries": 2}
```

The resolved configuration is saved as ``DIR/search.json``; ``--resume`` continues with it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from anytime.config import ConfigError, known_fields
from anytime.files import read_json

# Fields that may differ between a search and its resumption: they change where and how fast trials run,
# not what the search computes. ``trials`` may grow too (the search then runs further).
RESUME_FREE = {"trials", "workers", "address", "cpus_per_trial", "gpus_per_trial", "max_retries", "data_cache"}


@dataclass
class SearchConfig:
    trials: int = 64
    workers: int = 2
    controller: str = "ppo"  # "ppo" or "random"
    seed: int = 0
    space: dict = field(default_factory=lambda: {"num_cells": 7, "levels": [3, 4, 5, 6, 7]})
    proxy: dict = field(default_factory=lambda: {"preset": "cpu"})  # a preset name plus overrides
    ppo: dict = field(default_factory=dict)  # PPOConfig fields
    lstm: dict = field(default_factory=dict)  # ControllerConfig fields
    address: str | None = None  # a Ray cluster to join; None = a local Ray on this machine
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_retries: int = 2  # tries after the first, per trial
    failure_reward: float = 0.0  # the reward of a failed trial (AP cannot be lower)
    reuse_duplicates: bool = True
    data_cache: str = "data/search-proxy"  # where the proxy's data and backbone weights are prepared

    def validate(self) -> "SearchConfig":
        from anytime.search.agents import CONTROLLERS

        if not isinstance(self.trials, int) or self.trials < 1:
            raise ConfigError(f"trials must be a positive integer, got {self.trials!r}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"workers must be a positive integer, got {self.workers!r}")
        if self.controller not in CONTROLLERS:
            raise ConfigError(f"unknown controller {self.controller!r}; choose from {', '.join(CONTROLLERS)}")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise ConfigError("cpus_per_trial must be positive and gpus_per_trial non-negative")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ConfigError(f"max_retries must be a non-negative integer, got {self.max_retries!r}")
        self.search_space()
        self.ppo_config()
        self.lstm_config()
        self.proxy_config()
        return self

    # -- the parts, as their own dataclasses -------------------------------------------------------------
    def search_space(self):
        from anytime.model.spec import ArchitectureError
        from anytime.search.space import SearchSpace

        try:
            return SearchSpace(**known_fields(SearchSpace, self.space, "space"))
        except ArchitectureError as e:
            raise ConfigError(str(e)) from None

    def ppo_config(self):
        from anytime.search.ppo import PPOConfig

        return PPOConfig(**known_fields(PPOConfig, self.ppo, "ppo")).validate()

    def lstm_config(self):
        from anytime.search.controller import ControllerConfig

        return ControllerConfig(**known_fields(ControllerConfig, self.lstm, "lstm"))

    def proxy_config(self):
        from anytime.search.proxy import load_proxy

        return load_proxy(None, self.proxy)

    # -- (de)serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SearchConfig":
        if not isinstance(d, dict):
            raise ConfigError("a search config must be a JSON object")
        try:
            return cls(**known_fields(cls, d, "search"))
        except TypeError as e:
            raise ConfigError(f"search config: {e}") from None


def load_search_config(path: str | Path | None) -> SearchConfig:
    if path is None:
        return SearchConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search config {path} does not exist")
    return SearchConfig.from_dict(read_json(path, ConfigError))


def resume_differences(saved: SearchConfig, new: SearchConfig) -> list[str]:
    """Fields that change what a resumed search computes (anything but ``RESUME_FREE``)."""
    a, b = saved.to_dict(), new.to_dict()
    return sorted(k for k in a if k not in RESUME_FREE and a[k] != b.get(k))
