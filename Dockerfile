# The gateway's image for the docker-compose stack (docker-compose.yml builds it).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install . \
    && useradd --system --no-create-home gateway \
    && mkdir /data && chown gateway /data

USER gateway
# The SQLite job store lives on a volume mounted here (DATABASE_URL=sqlite:////data/gateway.db).
VOLUME /data
ENV GATEWAY_PORT=8000 \
    DATABASE_URL=sqlite:////data/gateway.db \
    GATEWAY_ENV=production
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]

CMD ["gateway", "serve", "--host", "0.0.0.0"]
