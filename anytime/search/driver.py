"""``run_search``: the controller in this process, trials on Ray workers, a checkpoint after every result."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from anytime.search.config import SearchConfig
from anytime.search.loop import SearchLoop


def build(cfg: SearchConfig) -> SearchLoop:
    """A fresh loop with its agent, as the configuration and its seed define them."""
    from anytime.search.agents import make_agent

    space, ppo = cfg.search_space(), cfg.ppo_config()
    agent = make_agent(cfg.controller, space, cfg.seed, cfg.lstm_config(), ppo)
    return SearchLoop(space, agent, cfg.trials, batch=ppo.batch, staleness=ppo.staleness,
                      failure_reward=cfg.failure_reward, reuse_duplicates=cfg.reuse_duplicates)


def run_search(cfg: SearchConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
               runner=None) -> dict:
    """Run (or resume) a search to ``cfg.trials`` finished trials; returns the summary."""
    import torch
    from tqdm import tqdm

    from anytime.cli import UserError
    from anytime.files import atomic_write
    from anytime.search.proxy import prepare
    from anytime.search.ray_runner import RayRunner
    from anytime.search.state import add_commit, code_commit, load_state, save_state, state_path, write_outputs

    t0 = time.perf_counter()
    given, out = Path(out_dir), Path(out_dir).resolve()  # best.json names the directory as given, never resolved
    commits = [code_commit()]
    cfg.validate()
    proxy = cfg.proxy_config()
    loop = build(cfg)
    if resume:
        state = load_state(out)
        commits = add_commit(state.get("commits", []), commits[0])
        loop.agent.load_state_dict(state["agent"])
        loop.load_state_dict(state["loop"])
        try:
            loop.extend(cfg.trials)
        except ValueError as e:
            raise UserError(f"--trials {cfg.trials}: {e}") from None
    else:
        if state_path(out).exists():
            raise UserError(f"{out} already holds a search; pass --resume to continue it or choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        loop.start()
    atomic_write(out / "search.json", json.dumps(cfg.to_dict(), indent=2) + "\n")

    def checkpoint():
        save_state(out, cfg.to_dict(), loop.state_dict(), loop.agent.state_dict(), commits)
        write_outputs(out, loop, proxy.name, given, commits)

    checkpoint()
    cache = str(Path(cfg.data_cache).resolve())
    if not loop.done():
        prepare(proxy, cache)  # once here, before any worker needs it (workers on other nodes make their own)
    runner = runner or RayRunner(cfg.workers, cfg.address, cfg.cpus_per_trial, cfg.gpus_per_trial, cfg.max_retries)
    torch.set_num_threads(1)  # the controller is small; the cores belong to the trials
    previous = _terminate_as_interrupt()
    bar = tqdm(total=cfg.trials, initial=len(loop.finished()), desc=f"search {cfg.controller}", unit="trial",
               disable=not progress, dynamic_ncols=True)
    _show_best(bar, loop)
    try:
        if not loop.done():
            runner.start()
        while not loop.done():
            while runner.in_flight < cfg.workers:
                trial = loop.next_to_run()
                if trial is None:
                    break
                loop.mark_running(trial.step)
                arch = loop.space.decode(trial.decisions, name=f"step{trial.step}").to_dict()
                runner.submit(trial.step, arch, proxy.to_dict(), cache, str(out / "trials" / f"{trial.step:05d}"))
            if runner.in_flight == 0:  # only reused duplicates were left, and they are already finished
                if loop.done():
                    break
                raise RuntimeError("search stalled: nothing runs and nothing can be proposed (a bug)")
            step, result = runner.wait()
            loop.finish(step, result)
            checkpoint()
            bar.update(len(loop.finished()) - bar.n)
            _show_best(bar, loop)
    finally:
        runner.close()
        signal.signal(signal.SIGTERM, previous)
        bar.close()
        if loop.finished():
            write_figures(out, loop, cfg)
    return summarize(out, loop, cfg, time.perf_counter() - t0)


def write_figures(out: Path, loop: SearchLoop, cfg: SearchConfig) -> None:
    from anytime.search.plots import plot_rewards, plot_unique
    from anytime.search.space import canonical
    from anytime.search.state import read_records

    label = f"{cfg.controller}, proxy {cfg.proxy_config().name}"
    plot_rewards(read_records(out), out / "reward_curve.png", title=f"reward over the search ({label})")
    keys = [canonical(loop.space.decode(t.decisions)) for t in loop.finished()]
    plot_unique(keys, out / "unique_archs.png", title=f"unique architectures ({label})")


def summarize(out: Path, loop: SearchLoop, cfg: SearchConfig, seconds: float) -> dict:
    finished = loop.finished()
    counts = {s: sum(t.status == s for t in finished) for s in ("ok", "reused", "failed")}
    best = loop.best()
    return {"out": str(out), "controller": cfg.controller, "trials": len(finished), **counts,
            "best_step": best.step if best else None, "best_reward": best.reward if best else None,
            "best": str(out / "best.json") if best else None, "seconds": round(seconds, 1),
            "complete": loop.done()}


def summary_line(s: dict) -> str:
    best = (f"best reward {s['best_reward']:.4f} at step {s['best_step']} -> {s['best']}" if s["best"] is not None
            else "no successful trial")
    m, sec = divmod(int(s["seconds"]), 60)
    return (f"search {s['controller']}: {s['trials']} trials ({s['ok']} trained, {s['reused']} reused, "
            f"{s['failed']} failed) in {m}m{sec:02d}s; {best}")


def _show_best(bar, loop: SearchLoop) -> None:
    best = loop.best()
    if best is not None:
        bar.set_postfix(best=f"{best.reward:.4f}", step=best.step, refresh=True)


def _terminate_as_interrupt():
    """SIGTERM stops a search like Ctrl-C does, through every ``finally`` (Ray is stopped, state is saved)."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    return signal.signal(signal.SIGTERM, handler)
