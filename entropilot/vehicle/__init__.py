"""The vehicle contract, with no dependency beyond numpy: the observation layout a policy reads (`layout`), the
airframes it flies (`airframe`) and the frame conventions (`frames`). The simulator (`entropilot.envs`) and the onboard
runtime (`entropilot.deploy`) both build on it, so a vehicle imports neither gymnasium nor pybullet to read it."""
