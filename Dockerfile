# pyloto for Cloud Run (or any container host): `pyloto serve` on 0.0.0.0:$PORT.
# Not built on the machine this was written on (no Docker engine there); see docs/deploy.md.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYLOTO_LOG_FORMAT=json \
    PYLOTO_DATA_DIR=/var/lib/pyloto \
    PORT=8080

RUN groupadd --system --gid 10001 pyloto \
    && useradd --system --create-home --uid 10001 --gid 10001 pyloto \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/pyloto

WORKDIR /app

# Dependencies first, in their own layer: rebuilt when pyproject.toml changes, not on every
# edit of the source. The redis and gcp extras cover every queue a container can use.
COPY pyproject.toml scripts/pyproject_requirements.py ./
RUN python pyproject_requirements.py pyproject.toml redis gcp > requirements.txt \
    && pip install --requirement requirements.txt

COPY README.md ./
COPY pyloto_cli ./pyloto_cli
RUN pip install --no-deps .

# numeric, so a platform that checks runAsNonRoot can see it is not root
USER 10001:10001

# Cloud Run sets PORT itself; with PORT set and no PYLOTO_HOST, serve binds 0.0.0.0.
EXPOSE 8080
ENTRYPOINT ["pyloto", "serve"]
