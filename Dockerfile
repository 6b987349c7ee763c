# syntax=docker/dockerfile:1
# sidecache image: wheels are built in the first stage; the final stage installs them
# offline and carries no compiler, no pip cache and no source tree.
# Needs BuildKit (RUN --mount below): the default builder since Docker Engine 23.
#   DOCKER_BUILDKIT=1 docker build -t sidecache .
# The example policy's origin is 127.0.0.1:8000, which inside a container is the container:
#   docker run --rm --network host sidecache                       (Linux: the host's :8000)
#   docker run --rm -p 8080:8080 --add-host host.docker.internal:host-gateway \
#     -e SIDECACHE_ORIGIN=http://host.docker.internal:8000 sidecache
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the wheel needs (.dockerignore keeps the rest of the context out too).
COPY pyproject.toml README.md ./
COPY proxy ./proxy
# The package and every dependency as wheels; the dependencies ship manylinux wheels,
# so nothing is compiled here either.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A numeric, non-root user: Kubernetes' runAsNonRoot can only verify a numeric UID.
RUN groupadd --system --gid 10001 sidecache \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin sidecache
# Bind-mounting the wheels keeps them out of every layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/sidecache-*.whl
# A default policy, so `docker run` works; Kubernetes mounts a ConfigMap over the directory.
COPY policies/example.yaml /etc/sidecache/policy.yaml
USER 10001:10001
# 8080: the proxy. 9090: admin (/healthz, /readyz, /metrics); in a container, pass
# --admin-listen 0.0.0.0:9090 to reach it from outside (the Helm chart does).
EXPOSE 8080 9090
ENTRYPOINT ["sidecache"]
CMD ["run", "--policy", "/etc/sidecache/policy.yaml"]
