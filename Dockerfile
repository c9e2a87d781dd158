# The entropilot runtime: one image for every pod in k8s/ (Ray head and workers, the RayJob submitter,
# the MLflow server); the GPU learner group runs the same recipe built on a CUDA build of torch.
#
#   docker build -t entropilot:0.1.0 .
#   docker build -t entropilot-gpu:0.1.0 --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#
# What KubeRay needs from a Ray image: `ray` on PATH and bash (it starts Ray with
# `/bin/bash -lc "ulimit -n ...; ray start ..."` and runs the autoscaler and the job submitter from the
# head's image). Since Ray 2.53 its probes are HTTP gets; older operators and RayJob submitters run
# `wget ... | grep success`, hence wget.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Equal to rayVersion in k8s/raycluster.yaml and within pyproject's ray pin (tests/test_k8s.py checks).
ARG RAY_VERSION=2.60.0

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*

# The user of the rayproject images, and of the pods' securityContext in k8s/: ray, uid 1000, /home/ray.
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash ray

# torch first, from the chosen index (a bare `pip install .` would pull the multi-GB default CUDA build),
# then Ray at the cluster's exact version; `pip install .` finds both satisfied.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
RUN pip install "ray[default,rllib,tune]==${RAY_VERSION}"

WORKDIR /home/ray/entropilot
COPY pyproject.toml setup.py README.md ./
COPY entropilot/ entropilot/
# setup.py compiles the simulator's hot path with Cython: a C compiler for the build only. The sources go
# after the install: a copy in the working directory would shadow the installed, compiled package.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install . && rm -rf build entropilot.egg-info entropilot \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
# The experiment files, for `entropilot train /home/ray/entropilot/configs/<name>.yaml` (k8s/rayjob.yaml).
COPY configs/ configs/

USER 1000
