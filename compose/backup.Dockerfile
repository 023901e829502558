# syntax=docker/dockerfile:1
#
# The `backup` service's image (compose/docker-compose.yml, profile
# `backup`): scripts/backup and scripts/restore with what they need —
# pg_dump/pg_restore of PostgreSQL 15, Python with boto3 (S3) and redis
# (a restore clears the sessions' event logs) — reaching the stores by their
# service names inside the compose network.
#
#   docker compose -f compose/docker-compose.yml --profile backup run --rm backup
#   docker compose -f compose/docker-compose.yml --profile backup run --rm backup \
#     scripts/restore --yes /backups/<time>    (stop the sluice replicas first)

FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client-15 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# The same pins as scripts/backup-lib.sh's BACKUP_REQUIREMENTS.
RUN pip install --no-cache-dir boto3==1.44.5 redis==8.1.0
WORKDIR /sluice
COPY scripts/backup scripts/restore scripts/backup-lib.sh scripts/backup-tool.py scripts/
ENV SLUICE_BACKUP_PYTHON=/usr/local/bin/python \
    BACKUP_ROOT=/backups
ENTRYPOINT []
CMD ["scripts/backup", "/backups"]
