# The Paymaster sidecar: a small image that runs as an unprivileged user.
#   docker build -t paymaster-sidecar .
#   docker run -p 7310:7310 -p 7319:7319 -v $PWD/sidecar.toml:/etc/paymaster/sidecar.toml:ro paymaster-sidecar
# The built-in config (deploy/sidecar.docker.toml) authenticates every caller over TLS: it starts only
# with a certificate in /etc/paymaster/tls and a tokens file in /etc/paymaster/tokens (compose and
# deploy/k8s mount them; docs/security.md).
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sdk ./sdk
COPY collector_processor ./collector_processor
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[sidecar]"

FROM python:3.12-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/paymaster --create-home paymaster
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels paymaster[sidecar] && rm -rf /wheels
COPY deploy/sidecar.docker.toml /etc/paymaster/sidecar.toml
USER 10001:10001
WORKDIR /var/lib/paymaster
# budget gRPC API (with gRPC health checking), OTLP/gRPC, OTLP/HTTP, Prometheus /metrics
EXPOSE 7310 7317 7318 7319
STOPSIGNAL SIGTERM
ENTRYPOINT ["paymaster", "sidecar"]
CMD ["--config", "/etc/paymaster/sidecar.toml"]
