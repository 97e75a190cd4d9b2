# syntax=docker/dockerfile:1
# Build: docker build -t timebank .
# Run:   docker run -e TIMEBANK_ENVIRONMENT=production -e TIMEBANK_SECRET_KEY=... \
#          -e TIMEBANK_DATABASE_URL=postgresql://user:pass@db/timebank -p 8000:8000 timebank

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY requirements/runtime.lock requirements/runtime.lock
RUN /opt/venv/bin/pip install -r requirements/runtime.lock

FROM python:3.11-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=/app \
    TIMEBANK_DATABASE_URL=sqlite+aiosqlite:////data/timebank.db
RUN groupadd --system timebank && useradd --system --gid timebank --home /app timebank \
    && mkdir -p /data && chown timebank:timebank /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY alembic.ini ./
COPY migrations migrations
COPY app app
USER timebank
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]
# `serve` runs the migrations, then uvicorn.
CMD ["python", "-m", "app.cli", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
