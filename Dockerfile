# syntax=docker/dockerfile:1
# Keygate: a small non-root runtime image. Build: docker build -t keygate .
# protoc is vendored by the build (protoc-bin-vendored): no system protobuf needed.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY migrations ./migrations
COPY proto ./proto
COPY src ./src
COPY benches ./benches
# Cargo checks every target the manifest declares, tests included.
COPY tests ./tests
RUN cargo build --release --locked --bin keygate \
 && install -D -m 0755 target/release/keygate /out/keygate
# The image's defaults live in a config file, not in ENV: environment variables beat the
# file, so an ENV here would override the file the Helm chart mounts over this one (its
# ports, its log format). `docker run -e KEYGATE_…` still overrides any of them.
RUN install -d -m 0755 /out/data \
 && printf '%s\n' \
      '# The image defaults (docker run); the Helm chart mounts its own file here.' \
      'listen = "0.0.0.0:50051"' \
      'database_url = "sqlite:///data/keygate.db"' \
      '[log]' \
      'format = "json"' \
      '[metrics]' \
      'listen = "0.0.0.0:9464"' \
      > /out/keygate.toml

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/keygate /usr/local/bin/keygate
COPY --from=build /out/keygate.toml /etc/keygate/keygate.toml
# The SQLite directory, writable by the runtime user (a named volume copies its owner).
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
WORKDIR /data
# gRPC (KeyAdmin, Authorize, ext_authz, health, reflection) and /metrics, /healthz, /readyz.
EXPOSE 50051 9464
# Names the file; not a setting, so it overrides nothing.
ENV KEYGATE_CONFIG=/etc/keygate/keygate.toml
ENTRYPOINT ["/usr/local/bin/keygate"]
CMD ["serve"]
