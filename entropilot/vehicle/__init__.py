"""The vehicle contract, dependency-free (standard library only): the observation layout a policy reads
(`layout`) and the airframes it flies (`airframe`). The simulator (`entropilot.envs`) and the onboard runtime
(`entropilot.deploy`) both build on it, so a vehicle imports neither gymnasium nor pybullet to read it."""
