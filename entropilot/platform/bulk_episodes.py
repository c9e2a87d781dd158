"""A vector env's rollout fragment, recorded step by step as whole arrays, turned into RLlib `SingleAgentEpisode`
chunks at its end: the chunks, lookback and episode ids RLlib's stock EnvRunner builds item by item."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from entropilot.rllib_internals import set_chunk_times


@dataclass
class OpenEpisode:
    """The part of an env's running episode that the next chunk starts from: what `SingleAgentEpisode.cut` keeps
    (the current observation, after a lookback of earlier steps) and where the episode stands."""

    id_: str | None  # None: a new episode (SingleAgentEpisode draws its id)
    t_started: int  # env steps of this episode before the current observation
    observations: np.ndarray  # (lookback + 1, ...): the last one is the current observation
    infos: list
    actions: np.ndarray | None  # (lookback, ...) each; None without lookback
    rewards: np.ndarray | None
    extra_model_outputs: dict[str, np.ndarray]
    start_time: float | None  # when the episode began (a reset), None for a continued chunk

    @classmethod
    def reset(cls, observation: np.ndarray, time: float) -> OpenEpisode:
        return cls(None, 0, observation[None], [{}], None, None, {}, time)

    @classmethod
    def continuing(cls, chunk: SingleAgentEpisode, lookback: int) -> OpenEpisode:
        """The continuation of a chunk, built by RLlib's own `cut` (so the lookback is RLlib's)."""
        successor = chunk.cut(len_lookback_buffer=lookback)
        return cls(
            successor.id_,
            successor.t_started,
            successor.observations.data,
            list(successor.infos.data),
            successor.actions.data if len(successor.actions.data) else None,
            successor.rewards.data if len(successor.rewards.data) else None,
            {k: v.data for k, v in successor.extra_model_outputs.items() if len(v.data)},
            None,
        )


@dataclass
class Fragment:
    """One rollout of a vector env with N sub-envs and T vector steps, as per-step arrays.

    ``observations[k]`` (N, ...) is what the policy saw before step k (``observations[T]``: after the last step);
    ``resets[k]`` marks the envs whose step k was an autoreset (their episode ended at step k - 1: the action
    was ignored and ``observations[k + 1]`` is a reset observation). ``final_infos[(k, i)]`` is env i's info at
    the end of its episode at step k.
    """

    observations: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    rewards: list = field(default_factory=list)
    terminated: list = field(default_factory=list)
    truncated: list = field(default_factory=list)
    resets: list = field(default_factory=list)
    extra_model_outputs: dict = field(default_factory=dict)
    step_times: list = field(default_factory=list)
    final_infos: dict = field(default_factory=dict)

    def add_step(self, actions, extra_model_outputs, observations, rewards, terminated, truncated, resets, time):
        self.actions.append(actions)
        for key, value in extra_model_outputs.items():
            self.extra_model_outputs.setdefault(key, []).append(value)
        self.observations.append(observations)
        self.rewards.append(rewards)
        self.terminated.append(terminated)
        self.truncated.append(truncated)
        self.resets.append(resets)
        self.step_times.append(time)


def build_chunks(
    fragment: Fragment,
    open_episodes: list[OpenEpisode | None],
    lookback: int,
    observation_space,
    action_space,
    constant_outputs: dict[str, object],
) -> tuple[list[SingleAgentEpisode], list[SingleAgentEpisode], list[OpenEpisode | None]]:
    """(finished episodes, chunks of running ones, what each env continues from) for one fragment, under Gymnasium's
    next-step autoreset (the step after an episode's end only resets that env).

    ``open_episodes[i]`` is env i's running episode at the fragment's start (None: its episode ended on the last
    step, so step 0 resets it). Chunks with no step are not returned (as the stock runner). Each chunk carries
    ``constant_outputs`` (e.g. the weights' sequence number) as an extra model output at every step.
    """
    num_steps = len(fragment.actions)
    if num_steps == 0:
        return [], [], open_episodes
    obs = np.stack(fragment.observations)
    actions = np.stack(fragment.actions)
    rewards = np.stack(fragment.rewards)
    terminated = np.stack(fragment.terminated)
    truncated = np.stack(fragment.truncated)
    extras = {k: np.stack(v) for k, v in fragment.extra_model_outputs.items()}
    done = terminated | truncated
    times = fragment.step_times

    finished, running, continued = [], [], []
    for env, episode in enumerate(open_episodes):
        start = 0
        if episode is None:  # step 0 resets this env
            episode, start = OpenEpisode.reset(obs[1, env], times[0]), 1
        ends = np.flatnonzero(done[start:, env]) + start
        for end in (*ends, None):
            if start >= num_steps:  # reset on the last step: the new episode has its first observation only
                break
            stop = num_steps if end is None else end + 1
            steps = slice(start, stop)
            chunk = SingleAgentEpisode(
                id_=episode.id_,
                observations=_join(episode.observations, obs[start + 1 : stop + 1, env]),
                observation_space=observation_space,
                infos=episode.infos + [{}] * (stop - start - 1) + [fragment.final_infos.get((stop - 1, env), {})],
                actions=_join(episode.actions, actions[steps, env]),
                action_space=action_space,
                rewards=_join(episode.rewards, rewards[steps, env]),
                terminated=bool(terminated[stop - 1, env]),
                truncated=bool(truncated[stop - 1, env]),
                extra_model_outputs={
                    **{k: _join(episode.extra_model_outputs.get(k), v[steps, env]) for k, v in extras.items()},
                    **{
                        k: _join(episode.extra_model_outputs.get(k), np.full(stop - start, v))
                        for k, v in constant_outputs.items()
                    },
                },
                t_started=episode.t_started,
                len_lookback_buffer=_length(episode.rewards),
            )
            set_chunk_times(chunk, times[start] if episode.start_time is None else episode.start_time, times[stop - 1])
            if end is None:
                running.append(chunk)
                episode = OpenEpisode.continuing(chunk, lookback)
            else:
                finished.append((end, env, chunk))
                # Step end + 1 resets this env; its observation after that step starts the next episode.
                episode = OpenEpisode.reset(obs[end + 2, env], times[end + 1]) if end + 1 < num_steps else None
                start = end + 2
        continued.append(episode)
    # In the order the stock loop finishes them: by step, then env.
    return [chunk for _, _, chunk in sorted(finished, key=lambda f: f[:2])], running, continued


def _join(lookback: np.ndarray | None, data: np.ndarray) -> np.ndarray:
    return data.copy() if lookback is None else np.concatenate([lookback, data])


def _length(lookback: np.ndarray | None) -> int:
    return 0 if lookback is None else len(lookback)
