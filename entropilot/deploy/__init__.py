"""Deployment: ONNX export, onnxruntime policy, onboard autopilot with safety, vehicle links.

- ``export``: checkpoint (or MLflow run) -> one self-contained ONNX file with normalization and the
  deterministic action in the graph, the contract in its metadata, parity with torch checked (needs torch, ray).
- ``onnx_policy``: ``OnnxPolicy``, the file at flight time: onnxruntime on one thread, contract and seal
  checked on load, finite numbers checked on every call (imports neither torch nor ray).
- ``contract``: what the two agree on: graph signature, metadata keys, schema version, content seal.
- ``registry``: a registered model (``models:/name@alias``) pulled from MLflow, checked against the SHA-256 recorded
  at registration and its seal, and cached (imports mlflow only when it pulls).
- ``autopilot``, ``safety``, ``links``: the onboard loop, its guards and failsafe ladder, the vehicle links.
- ``readiness`` (flights and statistics), ``readiness_config`` (the condition matrix, ``readiness.yaml``),
  ``readiness_report`` (table, Markdown, JSON, plot), ``readiness_record`` (the report into the file and MLflow; the
  gated registration): the ground-side flight-readiness evaluation (uses the simulator).
- ``gate``: whether a report in a policy file clears its gate (plain Python: the vehicle side checks it).

Importing this package imports nothing heavy; import the submodule you need.
"""
