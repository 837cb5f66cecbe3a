# Turnout: slim runtime image. Build: docker build -t turnout .
# Run:   docker run -p 8000:8000 -p 8001:8001 -v $PWD/models:/models turnout serve /models
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos protos
COPY server server
COPY router router
COPY model_store model_store
COPY drift drift
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 turnout
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER turnout
WORKDIR /home/turnout
ENV TURNOUT_STATE_DIR=/home/turnout/state
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status == 200 else 1)"
ENTRYPOINT ["turnout"]
CMD ["serve"]
