"""The heading-frame observation (env option ``observation_frame: heading``): the same at every heading, the env's
transform and the exported graph's agree, and an exported policy takes the world-frame observation a link sends."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import needs_cc, train_tiny_hover

from entropilot.deploy.policy_graph import PolicyGraph, to_onnx
from entropilot.deploy.policy_graph import to_heading_frame as graph_heading_frame
from entropilot.envs import HOVER_DISCRETE_ID, HOVER_ID, SWARM_ID, WAYPOINT_ID, make_env, make_vector_env
from entropilot.envs.observation import to_heading_frame
from entropilot.platform.algorithm import ObservationFilterStats

# (x, y) pairs a turn about z moves: position error, velocity, and the rotation matrix's columns in rows 1 and 2.
PAIRS = ((0, 1), (12, 1), (3, 3), (4, 3), (5, 3))


def _world_observations(env_id: str = HOVER_ID, count: int = 40) -> np.ndarray:
    """Observations along short flights (starts, then a few steps of random commands), in the world frame."""
    env = make_env(env_id, start_tilt_deg=30.0, start_velocity=0.5)
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(count // 4):
        obs, _ = env.reset(seed=seed)
        rows.append(obs)
        for _ in range(3):
            obs, *_ = env.step(rng.uniform(-0.5, 0.5, 4).astype(np.float32))
            rows.append(obs)
    env.close()
    return np.array(rows, dtype=np.float32)


def _turned(obs: np.ndarray, angle: float) -> np.ndarray:
    """The same flight with the whole world turned about z by ``angle``."""
    c, s = math.cos(angle), math.sin(angle)
    out = obs.astype(np.float64)
    for i, stride in PAIRS:
        x, y = out[..., i].copy(), out[..., i + stride].copy()
        out[..., i], out[..., i + stride] = c * x - s * y, s * x + c * y
    return out.astype(np.float32)


def _heading(obs: np.ndarray) -> np.ndarray:
    out = np.array(obs, dtype=np.float32)
    for row in out.reshape(-1, out.shape[-1]):
        to_heading_frame(row)
    return out


def test_every_heading_gives_the_same_observation():
    world = _world_observations()
    heading = _heading(world)
    for angle in (0.4, 2.1, -2.9, math.pi):
        assert np.abs(_heading(_turned(world, angle)) - heading).max() < 1e-5
    # Heading 0 in its own frame; distances, heights, body rates and the previous action unchanged.
    assert not heading[:, 6].any() and heading[:, 3].min() > 0
    for i, stride in PAIRS[:2]:
        assert np.allclose(np.hypot(heading[:, i], heading[:, i + stride]), np.hypot(world[:, i], world[:, i + stride]))
    assert np.array_equal(heading[:, 15:], world[:, 15:]) and np.array_equal(heading[:, [2, 14]], world[:, [2, 14]])
    rotation = heading[:, 3:12].reshape(-1, 3, 3)
    assert np.abs(rotation @ rotation.transpose(0, 2, 1) - np.eye(3)).max() < 1e-5
    assert np.abs(_heading(heading) - heading).max() < 1e-6  # already there: nothing turns


@pytest.mark.parametrize("env_id", [HOVER_ID, WAYPOINT_ID])
def test_the_envs_observe_in_the_frame_they_are_given(env_id):
    world, heading = make_env(env_id), make_env(env_id, observation_frame="heading")
    vector = make_vector_env(env_id, 3, observation_frame="heading", sensor_noise={"attitude": 0.01})
    noisy = make_env(env_id, observation_frame="heading", sensor_noise={"attitude": 0.01})
    try:
        a, _ = world.reset(seed=7)
        b, _ = heading.reset(seed=7)
        assert np.abs(_heading(a) - b).max() < 1e-6 and b[6] == 0
        rows, _ = vector.reset(seed=11)
        one, _ = noisy.reset(seed=11)
        assert np.array_equal(rows[0], one) and not rows[:, 6].any()  # noise first, then the turn
    finally:
        for env in (world, heading, vector, noisy):
            env.close()


@pytest.mark.parametrize("env_id", [SWARM_ID, HOVER_DISCRETE_ID])
def test_tasks_whose_commands_are_in_the_world_frame_refuse_it(env_id):
    with pytest.raises(ValueError, match="observation_frame='heading'"):
        make_env(env_id, observation_frame="heading")


def test_the_exported_graph_turns_as_the_env_does():
    world = _world_observations()
    with torch.no_grad():
        graph = graph_heading_frame(torch.as_tensor(world)).numpy()
    assert np.abs(graph - _heading(world)).max() < 1e-6


def test_an_exported_heading_frame_policy_takes_the_world_frame_a_link_sends():
    from ray.rllib.algorithms.ppo import PPOConfig

    torch.manual_seed(0)
    env = make_env(HOVER_ID, observation_frame="heading")
    module = PPOConfig().environment(HOVER_ID).get_rl_module_spec(env=env.unwrapped).build()
    env.close()
    stats = ObservationFilterStats(mean=np.full(22, 0.1), std=np.full(22, 0.5), clip=10.0, count=100)
    world = _world_observations()
    model = to_onnx(PolicyGraph(module, stats, heading_frame=True).eval(), torch.as_tensor(world[:2]))
    session = ort.InferenceSession(model.SerializeToString())

    def act(obs):
        return session.run(None, {session.get_inputs()[0].name: obs})[0]

    from_world = act(world)
    assert np.abs(act(_heading(world)) - from_world).max() < 1e-5  # the env's heading frame: the graph turns nothing
    assert np.abs(act(_turned(world, 1.3)) - from_world).max() < 1e-4  # any heading flies alike
    with torch.no_grad():  # the same graph without the turn acts otherwise on the world frame: the turn is in the file
        plain = PolicyGraph(module, stats).eval()(torch.as_tensor(world)).numpy()
    assert np.abs(plain - from_world).max() > 1e-3


@pytest.fixture(scope="module")
def heading_export(tmp_path_factory, mlflow_server):
    """A one-iteration heading-frame hover run, exported. Export's parity check covers the out-of-range probes too:
    they are turned into the heading frame, as the env would emit them."""
    from entropilot.deploy.export import export_policy

    root = tmp_path_factory.mktemp("heading")
    checkpoint = train_tiny_hover(root, mlflow_server, "tiny-heading", "test-heading", observation_frame="heading")
    return export_policy(checkpoint, root / "policy.onnx")


def test_a_heading_frame_export_takes_the_world_frame_observation_a_link_sends(heading_export):
    from entropilot.deploy.links.base import observation_from_telemetry
    from entropilot.deploy.links.sim import SimLink
    from entropilot.deploy.onnx_policy import OnnxPolicy

    policy = OnnxPolicy(heading_export.path)
    assert policy.metadata["env_kwargs"]["observation_frame"] == "heading"
    # A vehicle link builds the world-frame observation; the env the policy trained in, the heading-frame one.
    link = SimLink.from_policy_metadata(policy.metadata, seed=3)
    link.connect()
    world = observation_from_telemetry(link.read_telemetry(), link.target, link.hover_action)
    env = make_env(HOVER_ID, **policy.metadata["env_kwargs"])
    heading, _ = env.reset(seed=3)
    env.close()
    link.close()
    assert abs(world[6]) > 0.01 and np.abs(_heading(world) - heading).max() < 1e-5  # the same state, two frames
    assert np.abs(policy(world) - policy(heading)).max() < 1e-5


@needs_cc
def test_the_c_export_of_a_heading_frame_policy_matches_onnxruntime(heading_export, tmp_path):
    # The turn in C: a cosine and a sine broadcast over the rotation's rows.
    from entropilot.deploy.c_export import build_c_policy
    from entropilot.deploy.onnx_policy import OnnxPolicy

    flights = _world_observations()
    c_policy = build_c_policy(heading_export.path, tmp_path / "c")
    assert np.abs(c_policy.batch(flights) - OnnxPolicy(heading_export.path).batch(flights)).max() <= 1e-5
