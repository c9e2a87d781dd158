"""`rllib_internals`' replacement of RLlib's `ConnectorV2.__init__` held to RLlib's own: every connector piece an
algorithm builds records the same constructor arguments (what a checkpoint rebuilds the piece from)."""

import pytest
from conftest import rllib_settings
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

from entropilot.platform.algorithm import algorithm_config
from entropilot.rllib_internals import RLLIB_CONNECTOR_INIT, _connector_init, connector_pieces

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def recorded_arguments() -> list[tuple[type, dict]]:
    """(class, recorded constructor arguments) of every piece of a hover runner's env-to-module and module-to-env
    pipelines and its learner's pipeline, in order."""
    config = algorithm_config(**rllib_settings({"resources.gpu": "off", "resources.envs_per_runner": 1}))
    runner = SingleAgentEnvRunner(config=config)
    learner = config.build_learner(spaces=runner.get_spaces())
    pieces = [*sum(connector_pieces(runner), []), *learner._learner_connector.connectors]
    return [(type(piece), piece._ctor_kwargs) for piece in pieces]


def test_connector_pieces_record_the_constructor_arguments_rllibs_init_records(monkeypatch):
    assert ConnectorV2.__init__ is _connector_init
    ours = recorded_arguments()
    monkeypatch.setattr(ConnectorV2, "__init__", RLLIB_CONNECTOR_INIT)
    theirs = recorded_arguments()
    assert [cls for cls, _ in ours] == [cls for cls, _ in theirs] and len(ours) >= 10
    for (cls, mine), (_, rllibs) in zip(ours, theirs):
        assert mine.keys() == rllibs.keys(), cls
        for name, value in rllibs.items():
            assert mine[name] == value, (cls, name)
