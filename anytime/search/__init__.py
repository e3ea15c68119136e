"""The architecture search of NAS-FPN (paper §3.1 and §4.2): an LSTM controller trained with PPO proposes
pyramid networks, workers on Ray train each on a proxy task, and the AP on held-out training images is the
reward.

- ``space``: the search space as a sequence of softmax decisions, and its exact encoding of ``PyramidSpec``;
- ``controller``: the LSTM policy (attention over the candidate features for the input decisions);
- ``ppo``: the clipped-objective update with a moving-average baseline and an entropy bonus;
- ``agents``: the PPO agent and the uniform random-search baseline behind one interface;
- ``loop``: which step is proposed when, so that a search is deterministic and resumes exactly;
- ``proxy``, ``trial``: the proxy task's presets and data, and one trial (train, then evaluate);
- ``ray_runner``, ``reaper``: trials as Ray tasks, and cleaning up Ray even after the driver is killed;
- ``state``, ``driver``, ``plots``, ``cli``: checkpoints, the search itself, its figures, ``anytime search``
  and ``anytime draw``.

Nothing here imports Ray at module level: only a search that runs trials starts it.
"""
