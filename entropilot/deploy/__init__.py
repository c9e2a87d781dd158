"""Deployment: ONNX export, onnxruntime policy, onboard autopilot with safety, vehicle links."""
