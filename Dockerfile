# collab pad: one process, embedded defaults. Build: docker build -t collab-pad .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    LOG_FORMAT=json

WORKDIR /app

# Dependencies first, from the pinned project metadata, in a layer of their own.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY app.py ./
COPY rooms ./rooms
COPY api ./api
COPY ui ./ui
COPY observability ./observability

RUN useradd --system --uid 10001 --home-dir /app collab
USER collab
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"8080\")}/healthz', timeout=2)"

# Exec form: SIGTERM reaches the server, which closes rooms gracefully.
CMD ["python", "app.py"]
