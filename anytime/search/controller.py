"""The controller: an LSTM that emits a pyramid network's decisions in order (paper §4.2, after Zoph et al.).

Each step of the LSTM makes one decision of ``SearchSpace`` (4 per merging cell), with its own softmax
classifier per decision kind; the embedding of what it chose is the next step's input:

- **inputs 1 and 2** are scored by attention (Zoph & Le 2017's skip-connection attention, as in NASNet's and
  ENAS's controllers): every candidate feature has an embedding, the pyramid inputs P3..P7 learned ones and
  each cell's new feature the LSTM state after that cell's last decision; the score of candidate j is
  ``v . tanh(W_key e_j + W_query h)``. The pool can grow with every cell, which a fixed-size softmax cannot;
  the chosen candidate's embedding is the next input;
- **the level** is a softmax over the levels, masked to the legal ones (no P3 for intermediate cells, the
  levels still missing for output cells); the next input is a learned level embedding;
- **the op** is a softmax over sum / global pooling; the next input is a learned op embedding.

Size and initialisation follow Zoph et al. 2018 ("Learning Transferable Architectures for Scalable Image
Recognition", Appendix A), whose controller NAS-FPN's resembles ("Similar to [44]"): a one-layer LSTM with
100 hidden units, every weight uniform in [-0.1, 0.1].

One code path (``_walk``) both samples (with a seeded ``torch.Generator``) and re-scores given decisions
(teacher forcing, for PPO's ratios), batched over architectures, so the two cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from anytime.search.space import SearchSpace


@dataclass
class ControllerConfig:
    hidden: int = 100  # Zoph et al. 2018, Appendix A: one-layer LSTM, 100 hidden units
    init_range: float = 0.1  # Zoph et al. 2018, Appendix A: weights uniform in [-0.1, 0.1]


class Controller(nn.Module):
    def __init__(self, space: SearchSpace, cfg: ControllerConfig | None = None):
        super().__init__()
        self.space, self.cfg = space, cfg or ControllerConfig()
        h, levels, ops = self.cfg.hidden, space.num_levels, space.num_ops
        self.lstm = nn.LSTMCell(h, h)
        self.start = nn.Parameter(torch.empty(1, h))
        self.input_embed = nn.Parameter(torch.empty(levels, h))  # the pyramid inputs P3..P7 as candidates
        self.level_embed = nn.Embedding(levels, h)
        self.op_embed = nn.Embedding(ops, h)
        self.key = nn.Linear(h, h, bias=False)
        self.query = nn.ModuleList(nn.Linear(h, h, bias=False) for _ in range(2))  # input 1, input 2
        self.score = nn.ModuleList(nn.Linear(h, 1, bias=False) for _ in range(2))
        self.level_head = nn.Linear(h, levels)
        self.op_head = nn.Linear(h, ops)
        for p in self.parameters():
            nn.init.uniform_(p, -self.cfg.init_range, self.cfg.init_range)
        self.register_buffer("intermediate_levels", torch.tensor(space.intermediate_level_mask()), persistent=False)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` architectures: decisions [n, 4N] (long) and their log-probabilities [n]."""
        decisions, logp, _ = self._walk(n, None, generator)
        return decisions, logp

    def evaluate(self, decisions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability [B] and entropy [B] (summed over the decisions) of given decisions [B, 4N]."""
        _, logp, entropy = self._walk(decisions.shape[0], decisions.long(), None)
        return logp, entropy

    def _walk(self, n: int, forced: torch.Tensor | None, generator: torch.Generator | None):
        space = self.space
        h = torch.zeros(n, self.cfg.hidden)
        c = torch.zeros_like(h)
        x = self.start.expand(n, -1)
        nodes = self.input_embed.unsqueeze(0).expand(n, -1, -1)
        keys = self.key(nodes)
        produced = torch.zeros(n, space.num_levels, dtype=torch.bool)
        rows = torch.arange(n)
        out, logp, entropy = [], torch.zeros(n), torch.zeros(n)

        def choose(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            nonlocal logp, entropy
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            logprobs = torch.log_softmax(logits, dim=-1)
            probs = logprobs.exp()
            k = len(out)
            if forced is None:
                choice = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                choice = forced[:, k]
            out.append(choice)
            logp = logp + logprobs[rows, choice]
            # 0 * log 0 = 0, written so that no -inf reaches the product (or its gradient) for masked choices
            entropy = entropy - (probs * logprobs.masked_fill(probs == 0, 0.0)).sum(-1)
            return choice

        for cell in range(space.num_cells):
            first = None
            for i in range(2):  # inputs 1 and 2, by attention over the candidates' embeddings
                h, c = self.lstm(x, (h, c))
                logits = self.score[i](torch.tanh(keys + self.query[i](h).unsqueeze(1))).squeeze(-1)
                mask = None
                if first is not None:  # without replacement
                    mask = torch.ones_like(logits, dtype=torch.bool)
                    mask[rows, first] = False
                j = choose(logits, mask)
                first = j if first is None else first
                x = nodes[rows, j]
            h, c = self.lstm(x, (h, c))  # output level
            mask = ~produced if space.is_output(cell) else self.intermediate_levels.expand(n, -1)
            level = choose(self.level_head(h), mask)
            if space.is_output(cell):
                produced = produced.clone()
                produced[rows, level] = True
            x = self.level_embed(level)
            h, c = self.lstm(x, (h, c))  # binary op
            op = choose(self.op_head(h), None)
            x = self.op_embed(op)
            # The new feature joins the candidates; its embedding is the state after the cell's last decision.
            nodes = torch.cat([nodes, h.unsqueeze(1)], dim=1)
            keys = torch.cat([keys, self.key(h).unsqueeze(1)], dim=1)
        return torch.stack(out, dim=1), logp, entropy
