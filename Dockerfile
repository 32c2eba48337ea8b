# collab pad: one process, embedded defaults.
#   docker build -t collab-pad .
#   docker run -p 8080:8080 -v collab-data:/data --stop-timeout 30 collab-pad
# Every setting is an environment variable (docs/configuration.md); docs/operations.md covers
# health checks, metrics, logs and backups.

# Pyodide (Python in the browser, served by the app): the npm package pinned in vendor/pyodide,
# installed in a stage of its own; only its runtime folder goes into the image.
FROM node:24-bookworm-slim AS pyodide
WORKDIR /build
COPY vendor/pyodide/package.json vendor/pyodide/package-lock.json ./vendor/pyodide/
RUN npm ci --prefix vendor/pyodide --no-audit --no-fund --loglevel=error

FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="collab pad" \
      org.opencontainers.image.description="A real-time collaborative code pad" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    DATA_DIR=/data \
    LOG_FORMAT=json

WORKDIR /app

# Dependencies first, from the pinned project metadata, in a layer of their own: it is rebuilt
# only when pyproject.toml changes, not on every code change.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The packages and module that pyproject.toml ships (tests/test_deploy_docker.py checks the list).
COPY app.py ./
COPY rooms ./rooms
COPY api ./api
COPY ui ./ui
COPY observability ./observability
# The questions a room can pick (QUESTIONS_DIR adds an operator's own).
COPY questions ./questions
COPY --from=pyodide /build/vendor/pyodide/node_modules/pyodide ./vendor/pyodide/node_modules/pyodide

# Bytecode compiled at build time: the code is read-only to the server's user, which could not
# write a cache at run time, so every start would compile again.
RUN python -m compileall -q app.py rooms api ui observability \
    && useradd --system --uid 10001 --user-group --home-dir /app --no-create-home collab \
    && mkdir -p /data \
    && chown collab:collab /data
# A new named volume starts as a copy of /data here, owned by the server's user.
VOLUME ["/data"]
USER collab
EXPOSE 8080

# Liveness only: /readyz turns 503 while the server stops, which must not count as unhealthy.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '8080')}/healthz\", timeout=2)"]

# Exec form, so the server is PID 1 and gets SIGTERM itself: it tells every client to reconnect
# (close code 1012) and exits. SIGTERM is Docker's default stop signal.
CMD ["python", "app.py"]
