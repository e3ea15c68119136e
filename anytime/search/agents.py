"""What proposes architectures: the PPO-trained controller, or uniform random search over the same space.

Both are seeded, and their whole state (weights, optimiser, baseline, random generator) round-trips through
``state_dict`` so that a resumed search continues exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from anytime.search.controller import Controller, ControllerConfig
from anytime.search.ppo import PPO, PPOConfig
from anytime.search.space import SearchSpace

CONTROLLERS = ("ppo", "random")


class RandomAgent:
    """Every decision uniform over its legal choices (``SearchSpace.sample_uniform``); never learns."""

    kind = "random"
    learns = False

    def __init__(self, space: SearchSpace, seed: int):
        self.space = space
        self.rng = np.random.default_rng(seed)

    def propose(self, n: int) -> list[tuple[tuple[int, ...], float]]:
        return [(self.space.sample_uniform(self.rng), math.nan) for _ in range(n)]

    def learn(self, batch: list[tuple[tuple[int, ...], float, float]]) -> dict | None:
        return None

    def state_dict(self) -> dict:
        return {"kind": self.kind, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class PPOAgent:
    """The LSTM controller (``controller``) trained by PPO (``ppo``); samples with its own torch Generator."""

    kind = "ppo"
    learns = True

    def __init__(self, space: SearchSpace, seed: int, controller: ControllerConfig | None = None,
                 ppo: PPOConfig | None = None):
        self.space = space
        with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed, not on global state
            torch.manual_seed(seed)
            self.controller = Controller(space, controller)
        self.ppo = PPO(self.controller, (ppo or PPOConfig()).validate())
        self.generator = torch.Generator().manual_seed(seed)

    def propose(self, n: int) -> list[tuple[tuple[int, ...], float]]:
        decisions, logp = self.controller.sample(n, self.generator)
        return [(tuple(d), float(p)) for d, p in zip(decisions.tolist(), logp.tolist())]

    def learn(self, batch: list[tuple[tuple[int, ...], float, float]]) -> dict:
        decisions = torch.tensor([d for d, _, _ in batch], dtype=torch.long)
        logp = torch.tensor([p for _, p, _ in batch], dtype=torch.float32)
        rewards = torch.tensor([r for _, _, r in batch], dtype=torch.float64)
        return self.ppo.update(decisions, logp, rewards)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "controller": self.controller.state_dict(), "ppo": self.ppo.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.controller.load_state_dict(state["controller"])
        self.ppo.load_state_dict(state["ppo"])
        self.generator.set_state(state["generator"])


def make_agent(kind: str, space: SearchSpace, seed: int, controller: ControllerConfig | None = None,
               ppo: PPOConfig | None = None):
    if kind == "ppo":
        return PPOAgent(space, seed, controller, ppo)
    if kind == "random":
        return RandomAgent(space, seed)
    from anytime.config import ConfigError

    raise ConfigError(f"unknown controller {kind!r}; choose from {', '.join(CONTROLLERS)}")
