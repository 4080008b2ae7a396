# The gateway's image (docker-compose.yml builds it; the Kubernetes manifests under deploy/ run it).
# Two stages: the first builds wheels (and has pip's build tooling), the second holds only the installed
# virtualenv and runs as an unprivileged user.
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN python -m venv /opt/gateway \
    && /opt/gateway/bin/pip install . \
    && /opt/gateway/bin/pip uninstall -y pip setuptools

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/gateway/bin:$PATH
# No pip, setuptools or wheel in the final image: the gateway's virtualenv is all it runs.
RUN python -m pip uninstall -y pip setuptools wheel \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway \
    && mkdir /data && chown gateway /data
COPY --from=build /opt/gateway /opt/gateway

USER 10001
# The embedded SQLite job store lives on a volume mounted here (DATABASE_URL=sqlite:////data/gateway.db);
# the distributed stack (docker-compose.yml, Kubernetes) sets a postgresql:// DATABASE_URL instead.
VOLUME /data
ENV GATEWAY_PORT=8000 \
    DATABASE_URL=sqlite:////data/gateway.db \
    GATEWAY_ENV=production
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]

# SIGTERM starts the graceful drain (GATEWAY_SHUTDOWN_TIMEOUT_SECONDS, 20 s by default): give the
# container longer than that before SIGKILL (compose: stop_grace_period; Kubernetes:
# terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
CMD ["gateway", "serve", "--host", "0.0.0.0"]
