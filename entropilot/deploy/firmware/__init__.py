"""Flight-computer code shipped with entropilot (C, not Python): ``CRAZYFLIE_APP`` is the Crazyflie out-of-tree
controller app that flies a policy exported with ``entropilot export --format c`` inside the firmware."""

from pathlib import Path

CRAZYFLIE_APP = Path(__file__).parent / "crazyflie"
