"""SAC's replay as flat transitions: a numpy ring buffer filled from sampled episodes and drawn uniformly into the
columns SAC's learner reads, in place of RLlib's prioritized episode buffer and learner connector."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

# What SAC's loss reads besides the transitions (RLlib 2.60, `SACTorchLearner._compute_loss_for_module_continuous`):
# each sample's importance weight (the prioritized buffer's correction; 1 under uniform sampling) and the n of its
# n-step return (gamma ** n_step discounts the bootstrap; 1 for one-step transitions).
WEIGHTS = "weights"
N_STEP = "n_step"
TRANSITION_COLUMNS = (Columns.OBS, Columns.ACTIONS, Columns.REWARDS, Columns.NEXT_OBS, Columns.TERMINATEDS)


def episode_transitions(episode: SingleAgentEpisode) -> dict[str, np.ndarray]:
    """The chunk's steps as (obs, action, reward, next obs, terminated) rows. Only the chunk's last step can end its
    episode; a truncated one (time limit) is not terminated, so its value is still bootstrapped from the next obs."""
    steps = len(episode)
    observations = np.asarray(episode.get_observations(slice(0, steps + 1)), dtype=np.float32)
    terminated = np.zeros(steps, dtype=bool)
    terminated[-1] = episode.is_terminated
    return {
        Columns.OBS: observations[:-1],
        Columns.ACTIONS: np.asarray(episode.get_actions(slice(0, steps)), dtype=np.float32),
        Columns.REWARDS: np.asarray(episode.get_rewards(slice(0, steps)), dtype=np.float32),
        Columns.NEXT_OBS: observations[1:],
        Columns.TERMINATEDS: terminated,
    }


class TransitionBuffer:
    """The last `capacity` transitions, one preallocated array per column; `sample` draws rows uniformly with
    replacement. Observations are kept as the episodes hold them: normalized by the env runner's filter at the time
    they were sampled, as in RLlib's own buffer."""

    def __init__(self, capacity: int, seed: int | None = None):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1; got {capacity}")
        self.capacity = capacity
        self.size = 0
        self._next = 0
        self._columns: dict[str, np.ndarray] = {}
        self._rng = np.random.default_rng(seed)

    def add_episodes(self, episodes: Iterable[SingleAgentEpisode]) -> int:
        """Add every step of the episode chunks; returns how many (the env steps they hold)."""
        chunks = [episode_transitions(episode) for episode in episodes if len(episode)]
        if not chunks:
            return 0
        self.add({key: np.concatenate([chunk[key] for chunk in chunks]) for key in TRANSITION_COLUMNS})
        return sum(len(chunk[Columns.REWARDS]) for chunk in chunks)

    def add(self, rows: dict[str, np.ndarray]) -> None:
        count = len(rows[Columns.REWARDS])
        if not self._columns:
            self._columns = {
                key: np.zeros((self.capacity, *column.shape[1:]), dtype=column.dtype) for key, column in rows.items()
            }
        if count > self.capacity:  # only the newest fit
            rows = {key: column[-self.capacity :] for key, column in rows.items()}
            count = self.capacity
        slots = (self._next + np.arange(count)) % self.capacity
        for key, column in rows.items():
            self._columns[key][slots] = column
        self._next = (self._next + count) % self.capacity
        self.size = min(self.size + count, self.capacity)

    def sample(self, count: int) -> dict[str, np.ndarray]:
        """`count` rows drawn uniformly (with replacement) from those held, with SAC's weights and n_step columns."""
        if not self.size:
            raise ValueError("the buffer is empty")
        rows = self._rng.integers(0, self.size, count)
        batch = {key: column[rows] for key, column in self._columns.items()}
        batch[WEIGHTS] = np.ones(count, dtype=np.float32)
        batch[N_STEP] = np.ones(count, dtype=np.float32)
        return batch

    def train_batch(self, count: int, module_id: str) -> MultiAgentBatch:
        """`sample(count)` as the learner takes it (RLlib turns the numpy columns into tensors on its device)."""
        return MultiAgentBatch({module_id: SampleBatch(self.sample(count))}, env_steps=count)
