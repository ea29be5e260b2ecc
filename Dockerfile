# The locust-xmpp image: Locust with the package and its metrics and k8s extras, the scenarios in /locustfiles,
# run as a non-root user. Everything is installed at build time: it needs no network at run time.
#
#   docker build -t locust-xmpp:0.1.0 .
#
# k8s/ runs it as the Locust master (locust-xmpp k8s master), the workers (locust --worker) and the exporter beside
# the lab Prosody (locust-xmpp exporter). Alone:
#
#   docker run --rm locust-xmpp:0.1.0 locust -f /locustfiles/livechat.py --list
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp

WORKDIR /build
COPY pyproject.toml README.md ./
COPY xmpp_user ./xmpp_user
RUN pip install ".[metrics,k8s]" && cd / && rm -rf /build

COPY locustfiles /locustfiles

# The user the manifests run as (runAsUser 10001); numeric, so that runAsNonRoot can check it.
RUN groupadd --gid 10001 locust && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp locust
USER 10001:10001
WORKDIR /tmp

# Locust's workers' port and web UI, the generator's metrics, the server exporter's metrics.
EXPOSE 5557 8089 9646 9647
CMD ["locust", "--help"]
