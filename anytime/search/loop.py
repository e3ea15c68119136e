"""The search's bookkeeping: which architecture is trial ``step``, when it runs, and when the agent learns.

Everything is a function of step numbers, never of which worker finished first, so a search is a
deterministic function of its seed (given deterministic rewards) and a resumed search continues exactly:

- PPO learns from fixed batches: steps ``[b * batch, (b + 1) * batch)`` form batch ``b``; update ``b + 1`` runs
  as soon as every trial of batch ``b`` has finished, in batch order, whatever order the trials end in.
- Batch ``b`` is sampled right after update ``b - staleness`` (batches ``0 .. staleness`` at the start), so it
  comes from the policy ``staleness`` updates behind; with staleness 1 the next batch is already queued while
  the current one finishes, and no worker waits for an update. PPO's importance ratio against the sampling
  policy's recorded log-probabilities is what makes learning from such slightly stale samples sound.
- Random search samples one architecture whenever a worker is free; its generator is sequential, so that is
  deterministic too.
- An architecture sampled again (the same network up to input order, ``space.canonical``) is not trained
  again: it takes the reward of its first occurrence, waiting for it if that trial is still running. Every
  trial trains with the same proxy seed, so a second training would give the same reward on the same machine.
- A failed trial (crash after its retries, or a non-finite loss) gets ``failure_reward``: a bad reward, not a
  dead search.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from anytime.search.space import SearchSpace, canonical

FINISHED = ("ok", "failed", "reused")


@dataclass
class Trial:
    step: int
    decisions: tuple[int, ...]
    logp: float
    status: str = "queued"  # queued -> running -> ok | failed; duplicates: waiting -> reused
    reward: float | None = None
    seconds: float | None = None
    worker: str | None = None
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    same_as: int | None = None  # the first step that sampled this architecture

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_dict(self) -> dict:
        d = asdict(self)
        d["decisions"] = list(self.decisions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Trial":
        return cls(**{**d, "decisions": tuple(d["decisions"])})


class SearchLoop:
    def __init__(self, space: SearchSpace, agent, total: int, batch: int = 8, staleness: int = 1,
                 failure_reward: float = 0.0, reuse_duplicates: bool = True):
        self.space, self.agent, self.total = space, agent, total
        self.batch, self.staleness = batch, staleness
        self.failure_reward, self.reuse_duplicates = failure_reward, reuse_duplicates
        self.trials: list[Trial] = []
        self.learned = 0  # batches the agent has learned from
        self.updates: list[dict] = []  # the agent's statistics per update
        self._first: dict[tuple, int] = {}

    # -- proposing ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Sample what may be sampled before any reward is known (PPO: batches 0 .. staleness)."""
        self._fill()

    def _fill(self) -> None:
        if self.agent.learns:
            want = min(self.total, (self.learned + self.staleness + 1) * self.batch)
            if len(self.trials) < want:
                self._add(self.agent.propose(want - len(self.trials)))

    def _add(self, proposals) -> None:
        for decisions, logp in proposals:
            trial = Trial(step=len(self.trials), decisions=tuple(decisions), logp=logp)
            key = canonical(self.space.decode(trial.decisions))
            first = self._first.get(key) if self.reuse_duplicates else None
            if first is None:
                self._first[key] = trial.step
            else:
                trial.same_as, trial.status = first, "waiting"
                if self.trials[first].finished:
                    self._copy_result(trial, self.trials[first])
            self.trials.append(trial)

    def next_to_run(self) -> Trial | None:
        """The earliest queued trial (random search samples one more when none is queued), or None."""
        while True:
            for t in self.trials:
                if t.status == "queued":
                    return t
            if self.agent.learns or len(self.trials) >= self.total:
                return None
            self._add(self.agent.propose(1))
            self._learn()  # a reused duplicate may complete a batch (no-op for random search)

    def mark_running(self, step: int) -> None:
        self.trials[step].status = "running"

    # -- results -----------------------------------------------------------------------------------------
    def finish(self, step: int, result: dict) -> None:
        """Record a trial's result: {"status": "ok"|"failed", "reward", "seconds", "worker", "metrics", "error"}."""
        trial = self.trials[step]
        if trial.finished:
            raise ValueError(f"trial {step} has already finished")
        ok = result.get("status") == "ok" and _finite(result.get("reward"))
        trial.status = "ok" if ok else "failed"
        trial.reward = float(result["reward"]) if ok else self.failure_reward
        trial.seconds = result.get("seconds")
        trial.worker = result.get("worker")
        trial.metrics = result.get("metrics") or {}
        trial.error = None if ok else (result.get("error") or f"non-finite reward {result.get('reward')!r}")
        for t in self.trials:
            if t.same_as == step and not t.finished:
                self._copy_result(t, trial)
        self._learn()

    @staticmethod
    def _copy_result(trial: Trial, first: Trial) -> None:
        trial.status, trial.reward, trial.seconds = "reused", first.reward, 0.0
        trial.worker, trial.metrics, trial.error = None, dict(first.metrics), first.error

    def _learn(self) -> None:
        while self.agent.learns:
            lo, hi = self.learned * self.batch, (self.learned + 1) * self.batch
            if hi > self.total or len(self.trials) < hi or not all(t.finished for t in self.trials[lo:hi]):
                return
            stats = self.agent.learn([(t.decisions, t.logp, t.reward) for t in self.trials[lo:hi]])
            self.learned += 1
            self.updates.append({"after_step": hi - 1, **(stats or {})})
            self._fill()

    # -- progress ------------------------------------------------------------------------------------------
    def extend(self, total: int) -> None:
        """Run to ``total`` trials instead (resuming with a larger --trials)."""
        last = max((t.step for t in self.finished()), default=-1)
        if total <= last:
            raise ValueError(f"trial {last} has already finished; cannot stop at {total} trials")
        self.total = total
        del self.trials[total:]  # sampled ahead, never run
        self._first = {k: s for k, s in self._first.items() if s < total}
        self._fill()

    def finished(self) -> list[Trial]:
        return [t for t in self.trials if t.finished]

    def done(self) -> bool:
        return len(self.trials) >= self.total and all(t.finished for t in self.trials[: self.total])

    def best(self) -> Trial | None:
        """The finished trial with the highest reward (the earliest on ties); failures never count."""
        return next(iter(self.top(1)), None)

    def top(self, k: int) -> list[Trial]:
        """The k best distinct architectures (an architecture sampled twice counts once), best first, earliest
        on ties; failures never count."""
        ranked, seen = [], set()
        for t in sorted((t for t in self.finished() if t.status != "failed"), key=lambda t: (-t.reward, t.step)):
            if t.decisions not in seen:
                seen.add(t.decisions)
                ranked.append(t)
        return ranked[:k]

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The bookkeeping; trials that were running are stored as queued, so a resumed search runs them again."""
        trials = [t.to_dict() for t in self.trials]
        for t in trials:
            if t["status"] == "running":
                t["status"] = "queued"
        return {"total": self.total, "learned": self.learned, "updates": self.updates, "trials": trials}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.learned, self.updates = state["total"], state["learned"], list(state["updates"])
        self.trials = [Trial.from_dict(t) for t in state["trials"]]
        self._first = {}
        for t in self.trials:
            if t.same_as is None:
                self._first.setdefault(canonical(self.space.decode(t.decisions)), t.step)


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False
