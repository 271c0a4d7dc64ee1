# syntax=docker/dockerfile:1
# One image for every service of the pipeline:
#   docker run IMAGE fetcher | appender | materializer | status
# runs `img2dataset serve <service>`, configured by I2D_* environment variables.

# Build stage: install the project and its dependencies into a virtualenv. Every dependency
# ships manylinux wheels, so no compiler is needed here either; the venv is all that is copied.
FROM python:3.11.13-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/img2dataset
WORKDIR /src
COPY . .
RUN /opt/img2dataset/bin/pip install --no-cache-dir .

# Runtime stage: the same base (the venv's interpreter links to it), the venv, a non-root user.
FROM python:3.11.13-slim-bookworm
LABEL org.opencontainers.image.title="img2dataset-segments" \
      org.opencontainers.image.description="img2dataset on append-only TAR segments: fetcher, appender, materializer and status services"
ENV PATH=/opt/img2dataset/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 img2dataset \
 && useradd --system --uid 10001 --gid img2dataset --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin img2dataset
COPY --from=build /opt/img2dataset /opt/img2dataset
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/i2d-healthcheck
USER 10001:10001
WORKDIR /tmp
# 9100: /metrics, /healthz, /readyz of the workers; 8080: the status dashboard and API.
EXPOSE 9100 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["i2d-healthcheck"]
# SIGTERM reaches img2dataset directly (exec form): work in flight is finished and committed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["img2dataset", "serve"]
CMD ["fetcher"]
