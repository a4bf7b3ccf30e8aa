# metaedge runtime bundle: model @@MODEL@@ for target @@TARGET@@ (@@PLATFORM@@), backend tensorrt.
# TensorRT engines only run on the GPU and TensorRT version that built them, so this image ships the
# ONNX model; the runner builds the engine at first start and caches it in the /cache volume.
# Commands to build and run it are in README.md.
ARG BASE_IMAGE=@@BASE_IMAGE@@
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DEBIAN_FRONTEND=noninteractive

# numpy/Pillow from the distribution: they match the system Python that TensorRT's bindings use.
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-numpy python3-pil \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -c "import sys; v = sys.version_info; assert v >= (3, 8), 'the metaedge runner needs Python >= 3.8; this base has %d.%d (JetPack 4 / L4T r32). Use an L4T r35+ (JetPack 5+) base: --build-arg BASE_IMAGE=...' % v[:2]"

RUN getent passwd metaedge >/dev/null || useradd --system --uid 10001 --home-dir /opt/metaedge --shell /usr/sbin/nologin metaedge \
    && mkdir -p /cache && chown metaedge /cache
COPY runtime/ /opt/metaedge/runtime/
COPY artifact/ /opt/metaedge/artifact/

USER metaedge
WORKDIR /opt/metaedge
ENV PYTHONPATH=/opt/metaedge/runtime METAEDGE_ARTIFACT=/opt/metaedge/artifact METAEDGE_BACKEND=tensorrt \
    METAEDGE_CACHE_DIR=/cache METAEDGE_HOST=0.0.0.0 METAEDGE_PORT=8080
VOLUME /cache
EXPOSE 8080
# The first start builds the engine (minutes on a Jetson): a long start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
    CMD python3 -m metaedge.deploy.runtime.healthcheck || exit 1
ENTRYPOINT ["python3", "-m", "metaedge.deploy.runtime"]
CMD ["serve"]
