"""Training platform: experiment config, RLlib assembly on Ray, MLflow tracking, sweeps, job submission."""
