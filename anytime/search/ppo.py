"""Proximal Policy Optimization of the controller (paper §4.2: "trained using the PPO algorithm [33]").

The paper names the algorithm and the reward but none of the numbers. Ours, and where each comes from:

| setting | value | source |
|---|---|---|
| clipped surrogate objective, epsilon | 0.2 | Schulman et al. 2017 (PPO), §3 and Table 1 (best of 0.1/0.2/0.3) |
| optimisation epochs over each batch | 10 | Schulman et al. 2017, MuJoCo settings (Table 3: K = 10 epochs) |
| optimiser | Adam | Schulman et al. 2017 |
| learning rate | 0.00035 | Zoph et al. 2018 (NASNet), Appendix A: "PPO with learning rate 0.00035" |
| entropy bonus weight | 0.00001 | Zoph et al. 2018, Appendix A: "entropy penalty with a weight of 0.00001" |
| reward baseline | exponential moving average, weight 0.95 | Zoph et al. 2018, Appendix A |
| architectures per update | 8 | ours: NASNet's and NAS-FPN's workqueues are asynchronous with hundreds of workers; on 2-16 workers 8 keeps every worker busy and still updates every few rounds |
| advantage scale | divided by a moving RMS of advantages (same 0.95 weight) | ours (common in PPO implementations): AP on the proxy is about 0.1 and moves by 0.01, the synthetic test reward moves by 0.1, and the step size should not depend on that |

The first batch sets the baseline to its mean reward (an EMA started at 0 would call every early
architecture good). Each reward then updates the baseline in step order, after the batch's update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anytime.search.controller import Controller


@dataclass
class PPOConfig:
    lr: float = 0.00035  # Zoph et al. 2018, Appendix A
    batch: int = 8  # architectures per update (ours, see the module docstring)
    epochs: int = 10  # Schulman et al. 2017, MuJoCo
    clip: float = 0.2  # Schulman et al. 2017
    entropy_weight: float = 0.00001  # Zoph et al. 2018, Appendix A
    baseline_decay: float = 0.95  # Zoph et al. 2018, Appendix A
    normalize_advantages: bool = True  # divide by a moving RMS of advantages (ours)
    # A batch is sampled from the policy at most this many updates old, so the workers never wait for an
    # update (PPO's ratio against the sampling policy's probabilities corrects for it); 0 = synchronous.
    staleness: int = 1

    def validate(self) -> "PPOConfig":
        from anytime.config import ConfigError

        if self.lr <= 0 or self.batch < 1 or self.epochs < 1 or not 0 < self.clip < 1:
            raise ConfigError("ppo: lr > 0, batch >= 1, epochs >= 1 and 0 < clip < 1 are required")
        if not 0 <= self.baseline_decay < 1 or self.entropy_weight < 0 or self.staleness < 0:
            raise ConfigError("ppo: baseline_decay in [0, 1), entropy_weight >= 0 and staleness >= 0 are required")
        return self


class PPO:
    """The controller's optimiser state: Adam, the reward baseline and the advantage scale."""

    def __init__(self, controller: Controller, cfg: PPOConfig):
        self.controller, self.cfg = controller, cfg
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=cfg.lr)
        self.baseline: float | None = None
        self.scale: float | None = None  # moving RMS of advantages
        self.updates = 0

    def update(self, decisions: torch.Tensor, old_logp: torch.Tensor, rewards: torch.Tensor) -> dict:
        """One PPO update on a batch of architectures sampled with log-probabilities ``old_logp``."""
        cfg = self.cfg
        rewards = rewards.double()
        if self.baseline is None:
            self.baseline = float(rewards.mean())
        adv = rewards - self.baseline
        if cfg.normalize_advantages:
            rms = float(adv.pow(2).mean().sqrt())
            self.scale = rms if self.scale is None else cfg.baseline_decay * self.scale + (1 - cfg.baseline_decay) * rms
            adv = adv / max(self.scale, 1e-8)
        adv = adv.float()
        old_logp = old_logp.float()
        stats = {}
        for _ in range(cfg.epochs):
            logp, entropy = self.controller.evaluate(decisions)
            ratio = torch.exp(logp - old_logp)
            surrogate = torch.min(ratio * adv, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv)
            loss = -surrogate.mean() - cfg.entropy_weight * entropy.mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            stats = {"loss": float(loss.detach()), "entropy": float(entropy.mean().detach()),
                     "clipped": float(((ratio - 1).abs() > cfg.clip).float().mean())}
        for r in rewards.tolist():  # Zoph et al.: an exponential moving average of previous rewards
            self.baseline = cfg.baseline_decay * self.baseline + (1 - cfg.baseline_decay) * r
        self.updates += 1
        return {**stats, "baseline": self.baseline, "updates": self.updates}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "baseline": self.baseline, "scale": self.scale,
                "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline, self.scale, self.updates = state["baseline"], state["scale"], state["updates"]
