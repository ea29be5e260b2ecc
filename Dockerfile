# The locust-xmpp image: Locust with the package and its metrics and k8s extras in a virtualenv (/opt/locust-xmpp),
# the scenarios in /locustfiles, run as a non-root user. Everything is installed at build time: it needs no network
# at run time.
#
#   docker build -t locust-xmpp:0.1.0 .
#   bash scripts/image.sh        # the same with podman, on a Debian base made by debootstrap: no registry needed
#
# k8s/ runs it as the Locust master (locust-xmpp k8s master), the workers (locust --worker) and the exporter beside
# the lab Prosody (locust-xmpp exporter). Alone:
#
#   docker run --rm locust-xmpp:0.1.0 locust -f /locustfiles/livechat.py --list
#
# BASE: any image with Python 3.11 or newer as python3 and its venv module (scripts/image.sh gives its own).
ARG BASE=python:3.11-slim

# ---- build: the virtualenv, without what only builds or tests ----
FROM ${BASE} AS build
# A CA bundle for pip where the way to PyPI needs one of its own (scripts/image.sh mounts the host's); unset otherwise.
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY pyproject.toml README.md ./
COPY xmpp_user ./xmpp_user
# Locust requires pytest only to run pytest-style locustfiles, which ours are not: pytest and what only it uses
# (iniconfig, pluggy, pygments) go, and so do pip and setuptools, which nothing needs at run time. pip compiles the
# byte code here: the root filesystem is read-only in the pods.
RUN python3 -m venv /opt/locust-xmpp \
    && /opt/locust-xmpp/bin/pip install ".[metrics,k8s]" \
    && /opt/locust-xmpp/bin/pip uninstall -y -q pytest iniconfig pluggy pygments setuptools pip

# ---- the image ----
FROM ${BASE}
ENV PYTHONUNBUFFERED=1 \
    PATH=/opt/locust-xmpp/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp
COPY --from=build /opt/locust-xmpp /opt/locust-xmpp
COPY locustfiles /locustfiles

# The user the manifests run as (runAsUser 10001); numeric, so that runAsNonRoot can check it.
RUN groupadd --gid 10001 locust && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp locust
USER 10001:10001
WORKDIR /tmp

# Locust's workers' port and web UI, the generator's metrics, the server exporter's metrics.
EXPOSE 5557 8089 9646 9647
CMD ["locust", "--help"]
