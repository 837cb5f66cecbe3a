# Turnout: slim runtime image. Build: docker build -t turnout .
# Run:   docker run --stop-timeout 40 -p 8000:8000 -p 8001:8001 -v $PWD/models:/models turnout serve /models
# The dependencies are those of constraints.txt (what the tests passed with), with the s3 extra.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY protos protos
COPY server server
COPY router router
COPY model_store model_store
COPY drift drift
COPY turnout turnout
RUN pip wheel --no-cache-dir -c constraints.txt --wheel-dir /wheels '.[s3]'

FROM python:3.11-slim
# tini as PID 1: it forwards SIGTERM to Turnout and reaps the processes Turnout starts (workers,
# the drift monitor, isolated model versions) should any outlive their parent
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini libjemalloc2 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 turnout
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'turnout[s3]' && rm -rf /wheels
USER 10001
WORKDIR /home/turnout
# jemalloc: glibc malloc maps and unmaps every large tensor buffer anew (a page fault per 4 KiB
# on every request; 4x slower at 1 MB per request, benchmarks/results/CURVES.md), keeping freed
# pages for reuse (a purged page faults in again: 16 MB requests ran 3.4x slower)
ENV TURNOUT_STATE_DIR=/home/turnout/state \
    PYTHONDONTWRITEBYTECODE=1 \
    LD_PRELOAD=libjemalloc.so.2 \
    MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status == 200 else 1)"
# On SIGTERM readiness turns false at once and requests in flight get --exit-timeout-secs (30 s by
# default) to finish: give the container longer than that before SIGKILL (docker's default is 10 s:
# docker run/stop --stop-timeout 40; Kubernetes: terminationGracePeriodSeconds, deploy/kubernetes)
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "turnout"]
CMD ["serve"]
