"""Hostile and mistaken input to every command: each case must end in one `Error:` line naming the input, the value
and what is allowed, with the expected exit status, no traceback, nothing printed as if work had started, and
nothing the user had (files, checkpoints, MLflow stores and runs) changed or added.

The table (`CASES`) runs in-process through click's runner without Ray or an MLflow server: everything here is
refused before either would start. The cases at the end that need a trained checkpoint, an MLflow server or Ray
share one of each and are in the integration tier. To add a case, add a row: `case(id, "command line", *says)`;
`{name}` in the command line is filled from `Workspace` (see its fields)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import pickle
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import write_linear_policy

from entropilot.cli import main as cli
from entropilot.envs import HOVER_DISCRETE_ID
from entropilot.platform.checkpoints import STATE_FILE
from entropilot.platform.config import dump_config, parse_config

HEX_ID = "0123456789abcdef0123456789abcdef"  # the form of an MLflow run id; no store knows it
SMALL = {"stop": {"iterations": 1}, "entropy": {"init": {"enabled": False}}}
SAC = "--set algorithm.name=SAC --set entropy.control.enabled=false"  # the small config as a SAC run


@dataclass(frozen=True)
class Case:
    id: str
    command: str  # the command line after `entropilot`, split on spaces; {name} is filled from `Workspace`
    says: tuple[str, ...]  # fragments the Error line must hold (the input, the value, what is allowed)
    exit: int = 1  # 1: refused by entropilot; 2: a usage error click reports
    cwd: str = "."  # relative to the workspace: "bare" is a folder with nothing in it
    errors: int = 1  # Error lines expected (a config with several problems has one per problem)


def case(id: str, command: str, *says: str, **kw) -> Case:
    return Case(id, command, says, **kw)


# ------------------------------------------------------------------------------------------------- the table

TRAIN = [
    case("missing-config", "train {ws}/nope.yaml", "nope.yaml", "does not exist", exit=2),
    case("config-is-a-folder", "train {ws}/runs", "runs", "is a directory", exit=2),
    case("empty-config", "train {ws}/empty.yaml", "empty.yaml", "holds no settings"),
    case("comments-only-config", "train {ws}/comments.yaml", "comments.yaml", "holds no settings"),
    case("config-is-a-list", "train {ws}/list.yaml", "list.yaml", "must hold a mapping"),
    case("config-not-yaml", "train {ws}/broken.yaml", "broken.yaml", "not valid YAML"),
    case("config-not-text", "train {ws}/binary.yaml", "binary.yaml", "cannot read config file"),
    case("config-unknown-section", "train {ws}/typo.yaml", "algorithmm", "unknown key"),
    case("set-without-equals", "train {hover} --set algorithm.lr", "section.field=value"),
    case("set-unknown-key", "train {hover} --set algorithm.lrr=0.1", "algorithm.lrr", "unknown key"),
    case("set-bad-yaml", "train {hover} --set model.hidden=[1,", "model.hidden", "not valid YAML"),
    case("set-inside-a-value", "train {hover} --set seed.x=1", "seed: is a value", "got 1"),
    case("stop-time-inf", "train {hover} --set stop.time_s=.inf", "stop.time_s", "finite", "inf"),
    case("collapse-floor-nan", "train {hover} --set entropy.collapse.floor=.nan", "floor", "finite"),
    case("kl-coef-inf", "train {hover} --set entropy.covariance.kl_coef=.inf", "kl_coef", "finite"),
    case("grad-clip-inf", "train {hover} --set algorithm.grad_clip=.inf", "grad_clip", "finite"),
    case("vf-loss-coeff-inf", "train {hover} --set algorithm.vf_loss_coeff=.inf", "vf_loss_coeff", "finite"),
    case(
        "cpus-per-runner-inf",
        "train {hover} --set resources.num_cpus_per_env_runner=.inf",
        "num_cpus_per_env_runner",
        "finite",
    ),
    case("control-target-nan", "train {hover} --set entropy.control.target=.nan", "entropy.control.target", "nan"),
    case("lr-negative", "train {hover} --set algorithm.lr=-1", "algorithm.lr", "0.0 < value <= 1.0", "-1"),
    case("gamma-above-one", "train {hover} --set algorithm.gamma=1.5", "algorithm.gamma", "1.5"),
    case("seed-negative", "train {hover} --set seed=-1", "seed", "-1"),
    case("unknown-algorithm", "train {hover} --set algorithm.name=DQN", "algorithm.name", "DQN"),
    case(
        "run-name-escapes",
        "train {hover} --set mlflow.run_name=../escape",
        "mlflow.run_name",
        "folder name",
        "../escape",
    ),
    case("run-name-dotdot", "train {hover} --set mlflow.run_name=..", "mlflow.run_name", "'..'"),
    case(
        "run-name-300-chars",
        "train {hover} --set mlflow.run_name={long_name}",
        "mlflow.run_name",
        "300 characters",
        "at most 100",
    ),
    case("name-with-slash", "train {hover} --set name=a/b", "name", "a/b"),
    case("file-store", "train {hover} --set mlflow.tracking_uri=./mlruns", "tracking_uri", "file stores"),
    case(
        "tracking-server-away",
        "train {hover} --set mlflow.tracking_uri=http://127.0.0.1:{free_port}",
        "mlflow.tracking_uri",
        "no MLflow server answers",
    ),
    case(
        "store-unwritable",
        "train {hover} --set mlflow.tracking_uri=sqlite:////proc/nope/mlflow.db",
        "mlflow.tracking_uri",
        "cannot write in /proc",
    ),
    case(
        "checkpoint-dir-is-a-file",
        "train {hover} --set checkpoint.dir={ws}/notes.txt",
        "checkpoint.dir",
        "notes.txt",
        "is a file",
    ),
    case(
        "checkpoint-dir-unwritable",
        "train {hover} --set checkpoint.dir=/proc/nope",
        "checkpoint.dir",
        "cannot write in /proc",
    ),
    case(
        "checkpoint-dir-taken",
        "train {hover} --set checkpoint.dir={ws}/runs/done",
        "checkpoint.dir",
        "already holds checkpoints",
        "--resume",
    ),
    case(
        "ray-address-garbage",
        "train {hover} --set resources.ray_address=garbage",
        "resources.ray_address",
        "HOST:PORT",
        "garbage",
    ),
    case("unknown-env", "train {hover} --set env.id=entropilot/Nope-v0", "env", "Nope-v0"),
    case("env-kwarg-inf", "train {hover} --set env.kwargs.episode_seconds=.inf", "episode_seconds", "finite"),
    case("env-kwarg-unknown", "train {hover} --set env.kwargs.bogus=1", "env.kwargs", "bogus"),
    case("env-rate-not-divisor", "train {hover} --set env.kwargs.control_hz=7", "control_hz", "divisor"),
    case(
        "minibatch-above-batch",
        "train {hover} --set algorithm.minibatch_size=5000",
        "minibatch_size",
        "train_batch_size",
    ),
    case("stop-emptied", "train {hover} --set stop={{}}", "stop", "never ends"),
    case("two-problems", "train {hover} --set algorithm.lr=-1 --set stop.iterations=0", "hover.yaml", errors=2),
    case(
        "discrete-levels-not-increasing",
        "train {hover} --set env.id={discrete} --set env.kwargs.velocity_levels=[0.5,-0.5]",
        "velocity_levels",
        "strictly increasing",
        "[0.5, -0.5]",
    ),
    case(
        "discrete-levels-too-fast",
        "train {hover} --set env.id={discrete} --set env.kwargs.velocity_levels=[-5,0,5]",
        "velocity_levels",
        "3.0 m/s",
    ),
    case(
        "discrete-levels-one",
        "train {hover} --set env.id={discrete} --set env.kwargs.velocity_levels=[0]",
        "velocity_levels",
        "2 to 15 finite speeds",
    ),
    case(
        "discrete-levels-nan",
        "train {hover} --set env.id={discrete} --set env.kwargs.velocity_levels=[.nan,0]",
        "velocity_levels",
        "finite",
    ),
    case(
        "discrete-repeat-zero",
        "train {hover} --set env.id={discrete} --set env.kwargs.command_repeat=0",
        "command_repeat",
        "an integer in [1,",
    ),
    case(
        "discrete-motors",
        "train {hover} --set env.id={discrete} --set env.kwargs.action_mode=motors",
        "action_mode",
        "'ctbr'",
    ),
    case(
        "discrete-threshold-unreachable",
        "train {hover} --set env.id={discrete} --set entropy.init.enabled=true --set entropy.init.threshold=5",
        "entropy.init.threshold",
        "categorical entropy",
        "[0.00, 4.83]",
    ),
    case(
        "discrete-target-unreachable",
        "train {hover} --set env.id={discrete} --set entropy.control.target=5",
        "entropy.control.target",
        "categorical entropy",
        "[0.00, 4.83]",
    ),
    case(
        "discrete-initial-std",
        "train {hover} --set env.id={discrete} --set model.initial_std=0.5",
        "model.initial_std",
        "no Gaussian std",
    ),
    case(
        "discrete-sigma-schedule",
        "train {hover} --set env.id={discrete} --set entropy.control.mode=sigma_schedule",
        "entropy.control.mode",
        "no Gaussian std",
    ),
    case(
        "discrete-batched-world",
        "train {hover} --set env.id={discrete} --set resources.vector_env=batched",
        "resources.vector_env",
        "HoverDiscrete-v0 needs sync",
    ),
    case(
        "sac-with-entropy-control",
        "train {hover} --set algorithm.name=SAC",
        "entropy.control.enabled",
        "SAC tunes its own",
    ),
    case(
        "sac-target-entropy-word",
        "train {hover} " + SAC + " --set algorithm.target_entropy=high",
        "algorithm.target_entropy",
        '"auto" or a finite number',
    ),
    case(
        "sac-learning-starts-negative",
        "train {hover} " + SAC + " --set algorithm.learning_starts=-1",
        "algorithm.learning_starts",
        "-1",
    ),
    case(
        "sac-replay-below-batch",
        "train {hover} " + SAC + " --set algorithm.replay_capacity=10",
        "replay_capacity",
        "train_batch_size",
    ),
    case(
        "sac-no-updates",
        "train {hover} " + SAC + " --set algorithm.updates_per_env_step=0",
        "algorithm.updates_per_env_step",
        "greater than 0",
    ),
    case("neither-config-nor-resume", "train", "give a CONFIG file, or --resume", exit=2),
    case("config-and-resume", "train {hover} --resume {ws}/runs/done", "give a CONFIG file, or --resume", exit=2),
]

RESUME = [
    case("resume-missing-path", "train --resume {ws}/runs/nope", "--resume", "no such folder"),
    case("resume-a-yaml-file", "train --resume {hover}", "--resume", "hover.yaml", "is a file"),
    case("resume-a-word", "train --resume runs-typo", "--resume", "not an MLflow run id", cwd="bare"),
    case(
        "resume-unknown-run-id-no-store", "train --resume {hex_id}", "--resume", HEX_ID, "no MLflow store", cwd="bare"
    ),
    case("resume-empty-folder", "train --resume {ws}/runs/empty", "--resume", "holds no checkpoint"),
    case("resume-all-damaged", "train --resume {ws}/runs/broken-state", "every checkpoint is damaged", STATE_FILE),
    case(
        "resume-truncated-state",
        "train --resume {ws}/runs/broken-state/iter_000001",
        "damaged checkpoint",
        STATE_FILE,
        "unreadable",
    ),
    case(
        "resume-truncated-module",
        "train --resume {ws}/runs/broken-module/iter_000001",
        "damaged checkpoint",
        "module_state.pkl",
        "truncated",
    ),
    case(
        "resume-unfinished-save",
        "train --resume {ws}/runs/unfinished/iter_000001",
        "damaged checkpoint",
        "did not finish",
    ),
    case("resume-stop-typo", "train --resume {ws}/runs/done --set stop.iteration=5", "stop.iteration", "unknown key"),
    case("resume-stop-invalid", "train --resume {ws}/runs/done --set stop.iterations=-1", "stop.iterations", "-1"),
    case("resume-stop-inf", "train --resume {ws}/runs/done --set stop.time_s=.inf", "stop.time_s", "finite"),
    case(
        "resume-changes-lr",
        "train --resume {ws}/runs/done --set algorithm.lr=0.1",
        "algorithm.lr",
        "only stop.* may change",
    ),
    case("resume-run-without-store", "train --resume {ws}/runs/tracked", "MLflow run of", "no MLflow store"),
    case("resume-config-moved-on", "train --resume {ws}/runs/old-config", "config.yaml", "unknown key"),
]

EXPORT = [
    case(
        "export-over-a-note",
        "export {ws}/runs/done -o {ws}/notes.txt",
        "--output",
        "notes.txt",
        "not an entropilot export",
        "--overwrite",
    ),
    case("export-to-a-folder", "export {ws}/runs/done -o {ws}/runs", "--output", "runs", "is a folder"),
    case("export-unwritable", "export {ws}/runs/done -o /proc/policy.onnx", "--output", "cannot write in /proc"),
    case(
        "export-under-a-file", "export {ws}/runs/done -o {ws}/notes.txt/p.onnx", "--output", "is a file, not a folder"
    ),
    case("export-name-too-long", "export {ws}/runs/done -o {ws}/{long_file}", "--output", "at most 255"),
    case("export-missing-source", "export {ws}/runs/nope -o {ws}/p.onnx", "SOURCE", "no such folder"),
    case("export-yaml-source", "export {hover} -o {ws}/p.onnx", "SOURCE", "is a file"),
    case("export-empty-folder", "export {ws}/runs/empty -o {ws}/p.onnx", "SOURCE", "holds no checkpoint"),
    case("export-run-id-no-store", "export {hex_id} -o p.onnx", "SOURCE", "no MLflow store", cwd="bare"),
    case(
        "export-damaged",
        "export {ws}/runs/broken-module/iter_000001 -o {ws}/p.onnx",
        "damaged checkpoint",
        "module_state.pkl",
    ),
    case(
        "export-bad-model-name",
        "export {ws}/runs/done -o {ws}/p.onnx --register a/b",
        "--register",
        "a/b",
        "cannot contain",
    ),
    case(
        "export-reserved-alias",
        "export {ws}/runs/done -o {ws}/p.onnx --register m --alias latest",
        "--alias",
        "latest",
        "reserved",
    ),
    case("export-alias-alone", "export {ws}/runs/done -o {ws}/p.onnx --alias prod", "--alias needs --register", exit=2),
    case("export-parity-zero", "export {ws}/runs/done -o {ws}/p.onnx --parity-batch 0", "--parity-batch", "0", exit=2),
    case(
        "export-file-store",
        "export {ws}/runs/done -o {ws}/p.onnx --tracking-uri ./mlruns",
        "--tracking-uri",
        "file stores",
    ),
    case(
        "export-registered-over-a-note", "export models:/m@a -o {ws}/notes.txt", "--output", "not an entropilot export"
    ),
    case("export-registered-no-store", "export models:/m@a -o p.onnx", "no MLflow store", cwd="bare"),
    case("export-register-registered", "export models:/m@a -o {ws}/p.onnx --register m", "registered already", exit=2),
    case("export-c-over-own-source", "export {policy} --format c -o {ws}/csrc", "policy.c", "not a file entropilot"),
    case("export-c-into-a-file", "export {policy} --format c -o {ws}/notes.txt", "notes.txt", "is a file"),
    case("export-c-unwritable", "export {policy} --format c -o /proc/c", "--output", "cannot write in /proc"),
    case("export-c-register", "export {ws}/runs/done --format c -o {ws}/c --register m", "--register logs", exit=2),
    case("export-c-damaged-policy", "export {ws}/truncated.onnx --format c -o {ws}/c", "truncated.onnx", "seal"),
    case("export-onnx-from-onnx", "export {policy} -o {ws}/p.onnx", "exported file already", exit=2),
    case("export-c-unknown-format", "export {policy} --format rust -o {ws}/c", "--format", "rust", exit=2),
    # the readiness gate on registration
    case("export-force-alone", "export {ws}/runs/done -o {ws}/p.onnx --force", "go with --register NAME", exit=2),
    case(
        "export-conditions-alone",
        "export {ws}/runs/done -o {ws}/p.onnx --conditions {ws}/gate_typo.yaml",
        "go with --register NAME",
        exit=2,
    ),
    case(
        "export-readiness-dir-alone",
        "export {ws}/runs/done -o {ws}/p.onnx --readiness-dir {ws}/r",
        "go with --register NAME",
        exit=2,
    ),
    case(
        "export-register-conditions-not-yaml",
        "export {ws}/runs/done -o {ws}/p.onnx --register m --conditions {ws}/broken.yaml",
        "broken.yaml",
        "not valid YAML",
    ),
    case(
        "export-register-condition-cannot-fly",
        "export {ws}/runs/done -o {ws}/p.onnx --register m --conditions {ws}/bad_option.yaml",
        "condition 'heavy'",
        "mas",
    ),
    case(
        "export-register-readiness-dir-unwritable",
        "export {ws}/runs/done -o {ws}/p.onnx --register m --readiness-dir /proc/r",
        "--readiness-dir",
        "cannot write in /proc",
    ),
    case(
        "export-register-readiness-dir-a-file",
        "export {ws}/runs/done -o {ws}/p.onnx --register m --readiness-dir {ws}/notes.txt",
        "--readiness-dir",
        "is a file",
        exit=2,
    ),
]

FLY = [
    case("fly-missing-policy", "fly {ws}/nope.onnx", "nope.onnx", "no such file"),
    case("fly-not-onnx", "fly {ws}/notes.txt", "notes.txt", "seal"),
    case("fly-truncated-policy", "fly {ws}/truncated.onnx", "truncated.onnx", "seal"),
    case("fly-sha-malformed", "fly {policy} --sha256 xyz", "--sha256", "xyz", "64 hex digits"),
    case("fly-sha-wrong", "fly {policy} --sha256 {zeros}", "expected 0000", "not the approved"),
    case("fly-duration-nan", "fly {policy} --duration nan", "--duration", "not a finite number", exit=2),
    case("fly-duration-inf", "fly {policy} --duration inf", "--duration", "not a finite number", exit=2),
    case("fly-duration-zero", "fly {policy} --duration 0", "--duration", "0", exit=2),
    case("fly-rate-nan", "fly {policy} --max-action-rate nan", "--max-action-rate", "finite", exit=2),
    case("fly-seed-negative", "fly {policy} --seed -1", "--seed", "-1", exit=2),
    case("fly-episodes-zero", "fly {policy} --episodes 0", "--episodes", "0", exit=2),
    case("fly-plot-unwritable", "fly {policy} --plot /proc/plot.png", "--plot", "cannot write in /proc"),
    case("fly-plot-under-a-file", "fly {policy} --plot {ws}/notes.txt/plot.png", "--plot", "is a file, not a folder"),
    case("fly-video-unwritable", "fly {policy} --video /proc/flight.gif", "--video", "cannot write in /proc"),
    case(
        "fly-target-nan", "fly {policy} --link mavlink --target nan,nan,nan", "--target", "three finite numbers", exit=2
    ),
    case("fly-target-two-numbers", "fly {policy} --link mavlink --target 1,2", "--target", "1,2", exit=2),
    case("fly-target-in-sim", "fly {policy} --target 0,0,1", "--target", "--link mavlink or crazyflie"),
    case("fly-connect-in-sim", "fly {policy} --connect udpout:127.0.0.1:14540", "--connect", "no address"),
    case(
        "fly-connect-malformed",
        "fly {policy} --link mavlink --connect bogus::string",
        "--connect",
        "bogus::string",
        "udpin:HOST:PORT",
    ),
    case(
        "fly-connect-port-range",
        "fly {policy} --link mavlink --connect udpout:127.0.0.1:99999",
        "--connect",
        "99999",
        "1 to 65535",
    ),
    case(
        "fly-connect-unknown-host",
        "fly {policy} --link mavlink --connect udpout:no.such.host.invalid:14540",
        "--connect",
        "cannot resolve",
    ),
    case(
        "fly-crazyflie-channel",
        "fly {policy} --link crazyflie --connect radio://0/200/2M",
        "--connect",
        "CHANNEL(0-125)",
    ),
    case("fly-crazyflie-scheme", "fly {policy} --link crazyflie --connect http://drone", "--connect", "cflib URI"),
    case("fly-video-on-mavlink", "fly {policy} --link mavlink --video {ws}/v.gif", "--video", "--link sim only"),
    case("fly-file-store", "fly {policy} --tracking-uri ./mlruns", "--tracking-uri", "file stores"),
    case("fly-cache-unwritable", "fly models:/m@a --cache-dir /proc/cache", "--cache-dir", "cannot write in /proc"),
    case("fly-unknown-link", "fly {policy} --link wifi", "--link", "wifi", exit=2),
    case("fly-registered-no-store", "fly models:/m@a", "no MLflow store", cwd="bare"),
    case("fly-bad-model-uri", "fly models:/", "models:/", "models:/NAME@ALIAS"),
    case("fly-c-sha-malformed", "fly {policy} --runtime c --sha256 xyz", "--sha256", "64 hex digits"),
    case("fly-c-truncated-policy", "fly {ws}/truncated.onnx --runtime c", "truncated.onnx", "seal"),
    case("fly-unknown-runtime", "fly {policy} --runtime rust", "--runtime", "rust", exit=2),
    # the readiness gate on a vehicle
    case("fly-force-in-sim", "fly {policy} --force", "--force", "--link mavlink or crazyflie"),
    case(
        "fly-no-readiness-report",
        "fly {policy} --link mavlink --connect udpout:127.0.0.1:{free_port}",
        "readiness gate refuses",
        "no readiness report",
        "--force",
    ),
    case(
        "fly-failing-readiness-report",
        "fly {ws}/failing.onnx --link crazyflie",
        "readiness gate refuses",
        "4 crash(es)",
        "--force",
    ),
]

EVALUATE = [
    case("evaluate-missing-policy", "evaluate {ws}/nope.onnx", "SOURCE", "nope.onnx", "no such file"),
    case("evaluate-missing-source", "evaluate {ws}/runs/nope", "SOURCE", "no such folder"),
    case("evaluate-not-onnx", "evaluate {ws}/notes.txt", "notes.txt", "seal"),
    case("evaluate-truncated-policy", "evaluate {ws}/truncated.onnx", "truncated.onnx", "seal"),
    case("evaluate-empty-folder", "evaluate {ws}/runs/empty", "SOURCE", "holds no checkpoint"),
    case(
        "evaluate-damaged-checkpoint",
        "evaluate {ws}/runs/broken-module/iter_000001",
        "damaged checkpoint",
        "module_state.pkl",
    ),
    case("evaluate-run-id-no-store", "evaluate {hex_id}", "SOURCE", "no MLflow store", cwd="bare"),
    case("evaluate-registered-no-store", "evaluate models:/m@a", "no MLflow store", cwd="bare"),
    case("evaluate-bad-model-uri", "evaluate models:/", "models:/", "models:/NAME@ALIAS"),
    case("evaluate-stamp-registered", "evaluate models:/m@a --stamp", "never changed", "Drop --stamp"),
    case("evaluate-swarm-policy", "evaluate {ws}/swarm.onnx", "readiness flies the policies of", "Swarm-v0"),
    case(
        "evaluate-conditions-missing",
        "evaluate {policy} --conditions {ws}/nope.yaml",
        "--conditions",
        "does not exist",
        exit=2,
    ),
    case("evaluate-conditions-not-yaml", "evaluate {policy} --conditions {ws}/broken.yaml", "not valid YAML"),
    case("evaluate-conditions-a-list", "evaluate {policy} --conditions {ws}/list.yaml", "must hold a mapping"),
    case("evaluate-conditions-empty", "evaluate {policy} --conditions {ws}/empty.yaml", "must hold a mapping"),
    case(
        "evaluate-conditions-not-text", "evaluate {policy} --conditions {ws}/binary.yaml", "binary.yaml", "cannot read"
    ),
    case(
        "evaluate-conditions-unknown-key",
        "evaluate {policy} --conditions {ws}/typo.yaml",
        "algorithmm: unknown key; valid keys here: episodes, seed",
        "conditions: Field required",
        errors=2,
    ),
    case(
        "evaluate-gate-unknown-condition",
        "evaluate {policy} --conditions {ws}/gate_typo.yaml",
        "gate.condition 'nominall' is not a condition",
    ),
    case("evaluate-extends-another", "evaluate {policy} --conditions {ws}/extends_other.yaml", "'default'"),
    case(
        "evaluate-condition-unknown-option",
        "evaluate {policy} --conditions {ws}/bad_option.yaml",
        "condition 'heavy'",
        "mas",
    ),
    case(
        "evaluate-condition-bad-value",
        "evaluate {policy} --conditions {ws}/bad_value.yaml",
        "condition 'empty_tank'",
        "true_airframe.mass",
        "[0.1, 10]",
    ),
    case(
        "evaluate-conditions-two-problems",
        "evaluate {policy} --conditions {ws}/two_problems.yaml",
        "episodes",
        "confidence",
        errors=2,
    ),
    case("evaluate-condition-bad-name", "evaluate {policy} --conditions {ws}/bad_name.yaml", "condition names"),
    case(
        "evaluate-checkpoint-condition-cannot-fly",  # refused before the export
        "evaluate {ws}/runs/done --conditions {ws}/bad_option.yaml",
        "condition 'heavy'",
    ),
    case(
        "evaluate-seeds-overlap",
        "evaluate {ws}/seeded.onnx --conditions {ws}/overlap.yaml",
        "held-out seeds [1000000, 1000200) overlap",
        "evaluation seeds",
    ),
    case("evaluate-episodes-zero", "evaluate {policy} --episodes 0", "--episodes", "0", exit=2),
    case("evaluate-episodes-huge", "evaluate {policy} --episodes 1000000", "--episodes", "1000000", exit=2),
    case("evaluate-workers-zero", "evaluate {policy} --workers 0", "--workers", "0", exit=2),
    case(
        "evaluate-output-dir-unwritable",
        "evaluate {policy} --output-dir /proc/r",
        "--output-dir",
        "cannot write in /proc",
    ),
    case(
        "evaluate-output-dir-a-file",
        "evaluate {policy} --output-dir {ws}/notes.txt",
        "--output-dir",
        "is a file",
        exit=2,
    ),
    case(
        "evaluate-export-over-a-note",
        "evaluate {ws}/runs/done --output-dir {ws}/notes",
        "--output-dir",
        "policy.onnx entropilot did not write",
    ),
    case("evaluate-file-store", "evaluate {policy} --tracking-uri ./mlruns", "--tracking-uri", "file stores"),
    case(
        "evaluate-cache-unwritable",
        "evaluate models:/m@a --cache-dir /proc/cache",
        "--cache-dir",
        "cannot write in /proc",
    ),
]

DEMO = [
    case("demo-unknown-env", "demo --env entropilot/Nope-v0", "--env", "Nope-v0", exit=2),
    case("demo-swarm", "demo --env entropilot/Swarm-v0", "--env", "single-drone", exit=2),
    case("demo-seed-negative", "demo --seed -1", "--seed", "-1", exit=2),
    case("demo-episodes-zero", "demo --episodes 0", "--episodes", "0", exit=2),
    case("demo-action-mode", "demo --action-mode thrust", "--action-mode", "thrust", exit=2),
    case("demo-plot-unwritable", "demo --plot /proc/plot.png", "--plot", "cannot write in /proc"),
    case("demo-video-under-a-file", "demo --video {ws}/notes.txt/v.gif", "--video", "is a file, not a folder"),
]

SITL = [
    case("sitl-rate-not-divisor", "sitl --rate 7", "--rate", "7", "divide the 240 Hz"),
    case("sitl-rate-zero", "sitl --rate 0", "--rate", "0", exit=2),
    case("sitl-unknown-env", "sitl --env entropilot/Nope-v0", "--env", "Nope-v0", "single-drone"),
    case("sitl-swarm", "sitl --env entropilot/Swarm-v0", "--env", "single-drone"),
    case("sitl-unknown-host", "sitl --host no.such.host.invalid", "--host", "cannot resolve"),
    case("sitl-start-nan", "sitl --start nan,0,1", "--start", "three finite numbers", exit=2),
    case("sitl-start-underground", "sitl --start 0,0,-5", "--start", "above the ground"),
    case("sitl-start-two-numbers", "sitl --start 1,2", "--start", "1,2", exit=2),
    case("sitl-duration-nan", "sitl --duration nan", "--duration", "finite", exit=2),
    case("sitl-port-zero", "sitl --port 0", "--port", "0", exit=2),
    case("sitl-port-taken", "sitl --port {bound_port}", "--port", "already in use"),
    case("sitl-seed-negative", "sitl --seed -1", "--seed", "-1", exit=2),
]

SWEEP = [
    case("sweep-grid-without-values", "sweep {hover} --grid algorithm.lr", "--grid", "KEY=V1,V2"),
    case("sweep-grid-nan", "sweep {hover} --grid algorithm.lr=.nan,1e-3", "algorithm.lr", "finite"),
    case("sweep-grid-unknown-key", "sweep {hover} --grid algorithm.lrr=1,2", "algorithm.lrr", "unknown key"),
    case("sweep-grid-owned-key", "sweep {hover} --grid name=a,b", "name", "cannot be swept"),
    case("sweep-grid-twice", "sweep {hover} --grid seed=1,2 --grid seed=3,4", "seed", "swept twice"),
    case("sweep-random-nan", "sweep {hover} --random algorithm.lr=uniform:0:nan", "--random", "finite numbers"),
    case(
        "sweep-random-unknown-dist",
        "sweep {hover} --random algorithm.lr=normal:0:1",
        "--random",
        "unknown distribution",
    ),
    case(
        "sweep-random-on-grid",
        "sweep {hover} --random algorithm.lr=uniform:1e-4:1e-3 --search grid",
        "--random needs --search random",
    ),
    case("sweep-unknown-metric", "sweep {hover} --grid seed=1,2 --metric nope", "--metric", "nope", "success_rate"),
    case(
        "sweep-dir-unwritable",
        "sweep {hover} --grid seed=1,2 --sweep-dir /proc/sweep",
        "--sweep-dir",
        "cannot write in /proc",
    ),
    case(
        "sweep-dir-is-a-file",
        "sweep {hover} --grid seed=1,2 --sweep-dir {ws}/notes.txt",
        "--sweep-dir",
        "is a file",
        exit=2,
    ),
    case("sweep-nothing", "sweep {hover}", "nothing to sweep"),
    case("sweep-samples-zero", "sweep {hover} --grid seed=1,2 --samples 0", "--samples", "0", exit=2),
    case("sweep-bad-config", "sweep {hover} --grid seed=1,2 --set algorithm.lr=.inf", "algorithm.lr", "finite"),
]

CLUSTER = [
    case(
        "submit-address-without-scheme", "submit {hover} --address 127.0.0.1:1", "--address", "127.0.0.1:1", "http://"
    ),
    case("submit-address-bad-ipv6", "submit {hover} --address http://[bad", "--address", "not a valid URL"),
    case("submit-no-address", "submit {hover}", "no Ray cluster given", exit=2),
    case(
        "submit-bad-config",
        "submit {hover} --address http://127.0.0.1:1 --set stop.time_s=.inf",
        "stop.time_s",
        "finite",
    ),
    case("jobs-list-ftp", "jobs list --address ftp://head:8265", "--address", "http://"),
    case("jobs-list-port-range", "jobs list --address http://head:99999", "--address", "Port out of range"),
    case(
        "jobs-logs-nobody-there",
        "jobs logs raysubmit_x --address http://127.0.0.1:{free_port}",
        "cannot reach a Ray dashboard",
    ),
    case("jobs-stop-no-address", "jobs stop raysubmit_x", "no Ray cluster given", exit=2),
]

OTHERS = [
    case("envs-extra-argument", "envs hover", "unexpected extra argument", exit=2),
    case("envs-unknown-option", "envs --all", "No such option", exit=2),
    case("unknown-command", "fy", "No such command", exit=2),
]

CASES = TRAIN + RESUME + EXPORT + FLY + EVALUATE + DEMO + SITL + SWEEP + CLUSTER + OTHERS


# ------------------------------------------------------------------------------------------------ workspace


@dataclass
class Workspace:
    """What a user has on disk: configs, notes, an exported policy, and run folders (intact, damaged, tracked)."""

    ws: Path
    policy: Path
    free_port: int
    bound_port: int
    long_name: str = "r" * 300
    zeros: str = "0" * 64  # a well-formed SHA-256 no file has
    long_file: str = "p" * 300 + ".onnx"

    def args(self, command: str) -> list[str]:
        fields = {**vars(self), "hover": self.ws / "hover.yaml", "hex_id": HEX_ID, "discrete": HOVER_DISCRETE_ID}
        return [arg.format(**fields) for arg in command.split()]


def write_checkpoint(folder: Path, config: dict, *, run_id: str | None = None) -> Path:
    """A checkpoint with RLlib 2.60's layout (what the checks before Ray read) and placeholder pickles: enough for the
    cases refused before RLlib would open it. The integration cases below use a trained one."""
    module = folder / "learner_group" / "learner" / "rl_module" / "default_policy"
    module.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "rllib_checkpoint.json").write_text(json.dumps({"type": "Algorithm", "checkpoint_version": "2.1"}))
    (folder / "algorithm_state.pkl").write_bytes(pickle.dumps({"iteration": 1}))
    (module / "module_state.pkl").write_bytes(pickle.dumps({"weights": list(range(2000))}))
    (folder / STATE_FILE).write_text(json.dumps({"iteration": 1, "history": [], "run_id": run_id}))
    return folder


def write_failing_report(policy: Path) -> None:
    """Stamp into ``policy`` a readiness report of its own network that fails the gate (4 nominal crashes)."""
    from entropilot.deploy.onnx_policy import OnnxPolicy
    from entropilot.deploy.readiness_record import stamp_report

    gate = {"condition": "nominal", "max_crashes": 0, "min_success_lower_bound": 0.95}
    reasons = ["4 crash(es), at most 0 allowed", "success lower bound 0.900 < 0.95"]
    report = {
        "policy": {"policy_sha256": OnnxPolicy(policy).policy_sha256},
        "gate": {**gate, "passed": False, "reasons": reasons},
    }
    stamp_report(policy, report)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("user")
    (ws / "bare").mkdir()
    config = parse_config(SMALL)
    dump_config(config, ws / "hover.yaml")
    (ws / "empty.yaml").write_text("")
    (ws / "comments.yaml").write_text("# stop:\n#   iterations: 10\n")
    (ws / "list.yaml").write_text("- stop\n- iterations\n")
    (ws / "broken.yaml").write_text("stop: {iterations: 1\n")
    (ws / "binary.yaml").write_bytes(bytes(range(256)))
    (ws / "typo.yaml").write_text("algorithmm:\n  lr: 0.001\n")
    (ws / "notes.txt").write_text("my notes: not a policy\n")
    policy = ws / "policy.onnx"
    write_linear_policy(policy)  # a sealed policy made without torch
    write_linear_policy(ws / "swarm.onnx", env_id="entropilot/Swarm-v0")
    # exported by a run that trained from seed 0 and evaluated on 1,000,000 onward
    write_linear_policy(ws / "seeded.onnx", seeds={"training": [0, 3], "evaluation": [1_000_000, 1_000_020]})
    write_failing_report(write_linear_policy(ws / "failing.onnx"))
    (ws / "notes").mkdir()
    (ws / "notes" / "policy.onnx").write_text("my own policy notes\n")
    matrices = {
        "gate_typo.yaml": {"conditions": {"nominal": {}}, "gate": {"condition": "nominall"}},
        "extends_other.yaml": {"extends": "mine", "conditions": {"nominal": {}}},
        "bad_option.yaml": {"conditions": {"nominal": {}, "heavy": {"true_airframe": {"mas": 1.2}}}},
        "bad_value.yaml": {"conditions": {"nominal": {}, "empty_tank": {"true_airframe": {"mass": 0.0}}}},
        "bad_name.yaml": {"conditions": {"nominal": {}, "heavy vehicle!": {}}},
        "two_problems.yaml": {"episodes": 0, "confidence": 2, "conditions": {"nominal": {}}},
        "overlap.yaml": {"extends": "default", "seed": 1_000_000},
    }
    for name, matrix in matrices.items():
        (ws / name).write_text(yaml.safe_dump(matrix))
    (ws / "truncated.onnx").write_bytes(policy.read_bytes()[:-100])
    (ws / "csrc").mkdir()
    (ws / "csrc" / "policy.c").write_text("/* my own controller */\nint main(void) { return 0; }\n")

    saved = config.model_dump(mode="json")
    runs = ws / "runs"
    (runs / "empty").mkdir(parents=True)
    write_checkpoint(runs / "done" / "iter_000001", saved)
    (write_checkpoint(runs / "broken-state" / "iter_000001", saved) / STATE_FILE).write_text('{"iteration": 1, "hist')
    module_state = runs / "broken-module" / "iter_000001" / "learner_group/learner/rl_module/default_policy"
    write_checkpoint(runs / "broken-module" / "iter_000001", saved)
    (module_state / "module_state.pkl").write_bytes((module_state / "module_state.pkl").read_bytes()[:-50])
    (write_checkpoint(runs / "unfinished" / "iter_000001", saved) / STATE_FILE).unlink()
    tracked = {**saved, "mlflow": {**saved["mlflow"], "tracking_uri": f"sqlite:///{ws}/bare/gone.db"}}
    write_checkpoint(runs / "tracked" / "iter_000001", tracked, run_id=HEX_ID)
    write_checkpoint(runs / "old-config" / "iter_000001", {**saved, "entropy": {"renamed": 1}})

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held, socket.socket() as unused:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as pymavlink binds a vehicle's port
        held.bind(("127.0.0.1", 0))  # another program's UDP port
        unused.bind(("127.0.0.1", 0))
        free_port = unused.getsockname()[1]
        unused.close()  # nobody listens here
        yield Workspace(ws, policy, free_port, held.getsockname()[1])


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with its content hash: what the user had."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        for path in sorted(root.rglob("*"))
    }


def run_cli(args, cwd: Path, env: dict | None = None):
    # No tracking server or cluster from the person's shell: the cases name their own.
    clean = {"MLFLOW_TRACKING_URI": None, "RAY_ADDRESS": None, "RAY_API_SERVER_ADDRESS": None, **(env or {})}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        return CliRunner().invoke(cli, list(args), env=clean, catch_exceptions=True)


def assert_refused(result, case: Case, before: dict, after: dict) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{case.id}: raised {result.exception!r}\n{result.output}"
    )
    assert result.exit_code == case.exit, f"{case.id}: exit {result.exit_code}\n{result.output}"
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == case.errors, f"{case.id}: {result.stderr}"
    usage = ("Usage:", "Try ", "") if case.exit == 2 else ()  # click's preamble to a usage error
    assert all(line.startswith(("Error:", *usage)) for line in result.stderr.splitlines()), result.stderr
    for fragment in case.says:
        assert any(fragment in line for line in errors), f"{case.id}: {fragment!r} not in {errors}"
    assert result.stdout == "", f"{case.id}: work started: {result.stdout}"
    assert after == before, f"{case.id}: changed {set(after.items()) ^ set(before.items())}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_hostile_input_is_one_clear_error_and_changes_nothing(case, workspace, isolated_mlflow_env):
    before = snapshot(workspace.ws)
    result = run_cli(workspace.args(case.command), workspace.ws / case.cwd)
    assert_refused(result, case, before, snapshot(workspace.ws))


def test_a_plot_into_a_missing_folder_is_made_there(tmp_path):
    """What used to fail after the flight: the folder is created when the plot is written."""
    plot = tmp_path / "new" / "folder" / "pid.png"
    result = run_cli(["demo", "--episodes", "1", "--plot", str(plot)], tmp_path)
    assert result.exit_code in (0, 1), result.output  # 1 would be the PID missing its target, not an error
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert plot.is_file() and "Error" not in result.stderr


def test_the_table_covers_every_command():
    commands = {case.command.split()[0] for case in CASES}
    assert commands >= {"train", "export", "fly", "evaluate", "demo", "sitl", "sweep", "submit", "jobs", "envs"}
    assert len(CASES) >= 100 and len({case.id for case in CASES}) == len(CASES)


def test_a_bug_still_shows_its_traceback(workspace, monkeypatch):
    """The rule turns expected failures into Error lines, nothing else: an unexpected exception stays visible."""
    import entropilot.envs.compiled as compiled

    monkeypatch.setattr(compiled, "status", lambda: 1 / 0)
    result = CliRunner().invoke(cli, ["envs"])
    assert isinstance(result.exception, ZeroDivisionError)


@pytest.mark.integration  # starts the real command in its own process
def test_the_real_command_prints_one_line_and_no_traceback(workspace):
    for args in (["train", "--resume", "runs-typo"], ["fly", str(workspace.policy), "--sha256", "xyz"]):
        done = subprocess.run(
            [sys.executable, "-m", "entropilot", *args],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=workspace.ws / "bare",
        )
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
        assert done.returncode == 1 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert not any((workspace.ws / "bare").iterdir())


# ------------------------------------------------------------------------- with a trained run, MLflow and Ray


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mlflow_server):
    """A real two-iteration run (checkpoints iter_000001 and iter_000002) tracked in the session's MLflow server."""
    from conftest import restored_mlflow_env

    from entropilot.platform.train import train

    root = tmp_path_factory.mktemp("trained")
    cfg = {
        "name": "hostile",
        "env": {"kwargs": {"episode_seconds": 2.0, "success_seconds": 1.0}},
        "algorithm": {"train_batch_size": 200, "minibatch_size": 100, "num_epochs": 1},
        "entropy": {"init": {"enabled": False}},
        # Sampling in the driver: what these cases check needs no runner actor, whose start
        # (~3.5 s on a busy 2-core box) was most of a tiny run's time.
        "resources": {"num_env_runners": 0, "envs_per_runner": 1, "num_cpus_per_env_runner": 0.5},
        "mlflow": {"tracking_uri": mlflow_server, "experiment": "test-hostile"},
        "stop": {"iterations": 2},
        "evaluation": {"interval": None},
        "checkpoint": {"interval": 1, "dir": str(root / "run")},
    }
    with restored_mlflow_env():
        result = train(parse_config(cfg), echo=lambda line: None)
    dump_config(parse_config(cfg), root / "hover.yaml")
    return root, result.run_id, mlflow_server


def run_status(uri: str, run_id: str) -> str:
    import mlflow

    return mlflow.MlflowClient(uri).get_run(run_id).info.status


REFUSED_WITH_A_REAL_RUN = [
    case("resume-stop-typo", "train --resume {run} --set stop.iteration=5", "stop.iteration", "unknown key"),
    case("resume-stop-invalid", "train --resume {run} --set stop.iterations=-1", "stop.iterations", "-1"),
    case("resume-changes-entropy", "train --resume {run} --set entropy.control.target=0.5", "only stop.* may change"),
    case("resume-unknown-run-id", "train --resume {hex_id}", "--resume", "no such MLflow run"),
    case("resume-truncated-module", "train --resume {damaged}/iter_000002", "module_state.pkl", "truncated"),
    case("resume-truncated-state", "train --resume {damaged}/iter_000001", STATE_FILE, "unreadable"),
    case("export-over-a-note", "export {run} -o {root}/hover.yaml", "not an entropilot export"),
    case(
        "too-many-env-runners",
        "train {root}/hover.yaml --set resources.num_env_runners=8 --set checkpoint.dir={root}/new",
        "needs 4 CPU",
        "has 2",
        "num_env_runners",
    ),
]


@pytest.mark.parametrize("case", REFUSED_WITH_A_REAL_RUN, ids=lambda c: c.id)
def test_refused_with_a_real_run_leaves_it_as_it_was(case, trained, isolated_mlflow_env):
    root, run_id, uri = trained
    damaged = root / "damaged"
    if not damaged.exists():  # a copy of the run with iter_000002's module state and iter_000001's state cut short
        shutil.copytree(root / "run", damaged)
        module = damaged / "iter_000002" / "learner_group/learner/rl_module/default_policy/module_state.pkl"
        module.write_bytes(module.read_bytes()[:-64])
        state = damaged / "iter_000001" / STATE_FILE
        state.write_text(state.read_text()[:-10])
    fields = {"run": root / "run", "damaged": damaged, "root": root, "hex_id": HEX_ID}
    args = [arg.format(**fields) for arg in case.command.split()]
    before, status = snapshot(root), run_status(uri, run_id)
    assert status == "FINISHED"
    result = run_cli(args, root, {"MLFLOW_TRACKING_URI": uri})
    assert_refused(result, case, before, snapshot(root))
    assert run_status(uri, run_id) == status


# Bad live tags set on a running training from outside (as from the MLflow UI): each is refused, the console and the
# run's tag `entropilot.live_error` saying why in the person's terms, and training goes on with the settings in force.
# `command` is TAG=TEXT; `says` what the error tag must hold. The run's mode is lower_bound (the default): target 0,
# coef_min 0, collapse floor -8.
LIVE_TAGS = [
    case(
        "live-field-not-in-mode",
        "entropy.control.sigma=0.5",
        "sigma=0.5",
        "not used in entropy.control.mode lower_bound",
    ),
    case("live-fixed-coef-in-lower-bound", "entropy.control.coef=0.01", "coef=0.01", "(live there: target, coef_min"),
    case("live-not-a-setting", "entropy.control.coef_init=0.01", "coef_init=0.01", "not a live setting"),
    case("live-not-a-number", "entropy.control.gain=fast", "gain=fast", "needs a number in (0, 1]"),
    case("live-out-of-range", "entropy.control.max_step=2", "max_step=2", "needs (0, 1]"),
    case("live-bounds-crossed", "entropy.control.coef_max=-0.01", "coef_max=-0.01", "needs [0, 1]"),
    case("live-penalty-in-lower-bound", "entropy.control.coef_min=-0.01", "coef_min=-0.01", "needs [0, 0.05]"),
    case("live-target-under-floor", "entropy.target=-9", "target=-9", "needs (-8, 5.67576)"),
    case(
        "live-bad-schedule",
        "entropy.control.target=[[5, 1]]",
        "target=[[5, 1]]",
        "[0] schedule must start at env step 0",
    ),
]


def test_bad_live_tags_are_refused_in_the_run_while_training_goes_on(tmp_path, mlflow_server):
    import mlflow
    from conftest import restored_mlflow_env

    from entropilot.platform.names import LIVE_ERROR_TAG, LIVE_TAG_PREFIX
    from entropilot.platform.train import train

    client = mlflow.MlflowClient(mlflow_server)
    cfg = {
        "name": "hostile-live",
        "env": {"kwargs": {"episode_seconds": 2.0, "success_seconds": 1.0}},
        "algorithm": {"train_batch_size": 200, "minibatch_size": 100, "num_epochs": 1},
        "entropy": {"init": {"enabled": False}},
        # Sampling in the driver: what these cases check needs no runner actor, whose start
        # (~3.5 s on a busy 2-core box) was most of a tiny run's time.
        "resources": {"num_env_runners": 0, "envs_per_runner": 1, "num_cpus_per_env_runner": 0.5},
        "mlflow": {"tracking_uri": mlflow_server, "experiment": "test-hostile-live"},
        "stop": {"iterations": len(LIVE_TAGS) + 1},
        "evaluation": {"interval": None},
        "checkpoint": {"interval": None, "dir": str(tmp_path / "run")},
    }
    lines, shown = [], {}

    def run_id():
        experiment = client.get_experiment_by_name("test-hostile-live")
        return client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")[0].info.run_id

    def error_tag(run, case):  # the tracker sends tags in the background: wait for this case's text to arrive
        for _ in range(600):
            text = client.get_run(run).data.tags.get(LIVE_ERROR_TAG, "")
            if text.startswith(case.says[0]):
                return text
            time.sleep(0.1)
        return text

    def echo(line):  # after iteration i's line, case i-1's refusal is in; then case i's tag goes in
        lines.append(line)
        if not line.startswith("iter "):
            return
        i, run = int(line.split()[1]), run_id()
        if i > 1:
            before = LIVE_TAGS[i - 2]
            shown[before.id] = error_tag(run, before)
            client.delete_tag(run, LIVE_TAG_PREFIX + before.command.split("=")[0])
        if i <= len(LIVE_TAGS):
            tag, text = LIVE_TAGS[i - 1].command.split("=", 1)
            client.set_tag(run, LIVE_TAG_PREFIX + tag, text)

    with restored_mlflow_env():
        result = train(parse_config(cfg), echo=echo)
    assert result.iterations == len(LIVE_TAGS) + 1 and run_status(mlflow_server, result.run_id) == "FINISHED"
    warnings = [line for line in lines if line.startswith("WARNING: live settings not applied")]
    assert len(warnings) == len(LIVE_TAGS)
    for i, (case, warning) in enumerate(zip(LIVE_TAGS, warnings), start=2):
        tag, text = case.command.split("=", 1)
        assert warning.startswith(f"WARNING: live settings not applied at iteration {i}, the ones in force stay: ")
        assert f"{LIVE_TAG_PREFIX}{tag} = {text}: " in warning, warning
        assert all(fragment in shown[case.id] for fragment in case.says), (case.id, shown[case.id])
    assert not [line for line in lines if line.startswith("live:")]  # nothing was applied
    entropy = client.get_metric_history(result.run_id, "entropy")
    assert [m.step for m in entropy] == list(range(1, len(LIVE_TAGS) + 2))  # every iteration trained


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(trained, isolated_mlflow_env):
    root, run_id, uri = trained
    run = root / "fallback"
    shutil.copytree(root / "run", run)
    module = run / "iter_000002" / "learner_group/learner/rl_module/default_policy/module_state.pkl"
    module.write_bytes(module.read_bytes()[:-64])
    result = run_cli(["train", "--resume", str(run), "--set", "stop.iterations=3"], root, {"MLFLOW_TRACKING_URI": uri})
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING: checkpoint")]
    assert len(warnings) == 1 and "iter_000002" in warnings[0] and "module_state.pkl" in warnings[0]
    assert f"resumed {run / 'iter_000001'} (iteration 1)" in result.stdout
    assert f"run {run_id}: 3 iterations" in result.stdout
    assert run_status(uri, run_id) == "FINISHED"


# ---------------------------------------------------------------------------------- what the checks judge by


def test_a_cluster_python_is_judged_by_the_project_requirements():
    from entropilot.platform.jobs import project_requirements, python_problem

    requirements, requires_python = project_requirements()
    assert {"ray", "mlflow", "matplotlib", "torch"} <= set(requirements) and requires_python
    versions = {name: importlib.metadata.version(name) for name in requirements}  # this environment's
    ours = {"executable": sys.executable, "python": "3.11.7", "versions": versions}
    assert python_problem(ours, requirements, requires_python) is None
    bare = {"executable": "/usr/bin/python3", "python": "3.11.2", "versions": {"numpy": "1.24.2"}}
    problem = python_problem(bare, requirements, requires_python)
    assert "/usr/bin/python3 (Python 3.11.2), which lacks" in problem and "matplotlib" in problem
    assert "matplotlib>=3.8 (missing)" in problem and "numpy>=1.26 (has 1.24.2)" in problem
    assert "/usr/bin/python3 -m pip install" in problem and "\n" not in problem
    old = {**bare, "python": "3.8.10"}
    assert "entropilot needs >=3.11" in python_problem(old, requirements, requires_python)
