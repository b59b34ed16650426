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

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/keygate /usr/local/bin/keygate
USER 65532:65532
WORKDIR /data
# gRPC (KeyAdmin, Authorize, ext_authz, health, reflection) and /metrics, /healthz, /readyz.
EXPOSE 50051 9464
ENV KEYGATE_LISTEN=0.0.0.0:50051 \
    KEYGATE_METRICS__LISTEN=0.0.0.0:9464 \
    KEYGATE_LOG__FORMAT=json \
    KEYGATE_DATABASE_URL=sqlite:///data/keygate.db
ENTRYPOINT ["/usr/local/bin/keygate"]
CMD ["serve"]
