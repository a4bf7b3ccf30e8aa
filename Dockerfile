# metaedge toolchain image: compress, export, compile (ONNX Runtime, TVM, aarch64 cross compiler) and
# bundle models, with `metaedge` as the entrypoint:
#
#   docker build -t metaedge .                       # torch from wheels/ if present, else PyTorch's CPU index
#   docker run --rm -v $PWD/out:/work metaedge compress --out /work/metaedge-out
#
# torch is always the CPU build: from a wheel in TORCH_WHEEL_DIR (default wheels/) when one is there
# (offline/air-gapped builds), otherwise from TORCH_INDEX_URL (PyTorch's CPU-only index). PyPI's
# default x86_64 torch is a multi-GB CUDA build and is never installed; the build checks that.
# BASE_IMAGE may be any Debian bookworm image, with Python 3.11 (python:*-slim) or without
# (a debootstrap root): the system python3 is installed from apt then.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_WHEEL_DIR=wheels
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive

# Extra CA certificates (tools/docker/certs/*.crt) for builds behind a TLS-intercepting proxy.
COPY tools/docker/certs/ /usr/local/share/ca-certificates/metaedge/
# g++ links TVM's x86 libraries; g++-aarch64-linux-gnu cross-links them for Raspberry Pi / Jetson.
RUN set -e; py=""; \
    python3 -c "import ensurepip, venv" >/dev/null 2>&1 || py="python3 python3-venv"; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates g++ g++-aarch64-linux-gnu libc6-dev-arm64-cross $py; \
    rm -rf /var/lib/apt/lists/*; \
    update-ca-certificates >/dev/null; \
    python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt

# torch first (largest layer, changes least).
COPY constraints.txt /tmp/metaedge/constraints.txt
COPY ${TORCH_WHEEL_DIR}/ /tmp/wheels/
RUN set -e; \
    pin="$(grep -E '^torch==' /tmp/metaedge/constraints.txt || echo torch)"; \
    if ls /tmp/wheels/torch-*.whl >/dev/null 2>&1; then \
        pip install /tmp/wheels/torch-*.whl; \
    else \
        pip install --index-url "$TORCH_INDEX_URL" "$pin"; \
    fi; \
    rm -rf /tmp/wheels; \
    python -c "import torch; assert torch.version.cuda is None, 'CUDA torch installed: ' + torch.__version__"; \
    if pip list 2>/dev/null | grep -qi '^nvidia-'; then echo 'CUDA libraries were pulled in' >&2; exit 1; fi

# The rest of the dependencies, read from pyproject.toml so this list never drifts.
COPY pyproject.toml /tmp/metaedge/pyproject.toml
RUN set -e; cd /tmp/metaedge; \
    python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
deps = p['dependencies'] + p['optional-dependencies']['tvm'] + p['optional-dependencies']['plot']; \
print('\n'.join(d for d in deps if not d.startswith('torch')))" > requirements.txt; \
    pip install -c constraints.txt -r requirements.txt

# metaedge itself last: code edits rebuild only this layer.
COPY . /src
RUN set -e; cd /src; [ -f README.md ] || echo "# metaedge" > README.md; \
    pip install --no-deps -c constraints.txt . ; \
    rm -rf /src; \
    useradd --create-home --uid 1000 --shell /bin/bash metaedge; \
    mkdir -p /work && chown metaedge /work

USER metaedge
WORKDIR /work
ENTRYPOINT ["metaedge"]
CMD ["--help"]
