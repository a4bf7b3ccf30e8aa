# metaedge runtime bundle: model @@MODEL@@ for target @@TARGET@@ (@@PLATFORM@@), backend @@BACKEND@@.
# Commands to build and run it are in README.md. Any Debian/Ubuntu base works, with or without Python.
ARG BASE_IMAGE=@@BASE_IMAGE@@
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive

# python:*-slim ships python3 with venv; plain Debian/Ubuntu/CUDA bases get it from apt.
RUN set -e; \
    if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -m venv /opt/venv
# Extra CA certificates (certs/*.crt, from `metaedge deploy --ca-cert`) for TLS-intercepting proxies,
# appended to pip's own CA bundle (no ca-certificates package: its setup takes minutes under QEMU).
COPY certs/ /opt/metaedge/certs/
RUN cat "$(/opt/venv/bin/python -c 'import pip._vendor.certifi as c; print(c.where())')" \
        $(ls /opt/metaedge/certs/*.crt 2>/dev/null) > /opt/metaedge/ca-bundle.pem
ENV PATH=/opt/venv/bin:$PATH PIP_CERT=/opt/metaedge/ca-bundle.pem

# Dependencies before the model: a new artifact reuses this (slow, under emulation) layer.
COPY requirements.txt /opt/metaedge/requirements.txt
RUN pip install -r /opt/metaedge/requirements.txt

RUN getent passwd metaedge >/dev/null || useradd --system --uid 10001 --home-dir /opt/metaedge --shell /usr/sbin/nologin metaedge
COPY runtime/ /opt/metaedge/runtime/
COPY artifact/ /opt/metaedge/artifact/

USER metaedge
WORKDIR /opt/metaedge
ENV PYTHONPATH=/opt/metaedge/runtime METAEDGE_ARTIFACT=/opt/metaedge/artifact \
    METAEDGE_HOST=0.0.0.0 METAEDGE_PORT=8080 METAEDGE_THREADS=@@THREADS@@
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python3 -m metaedge.deploy.runtime.healthcheck || exit 1
ENTRYPOINT ["python3", "-m", "metaedge.deploy.runtime"]
CMD ["serve"]
