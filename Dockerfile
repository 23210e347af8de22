# syntax=docker/dockerfile:1
#
#   docker build -t sessiongate .
#   docker run --rm -p 8080:8080 -p 8443:8443 \
#     -e SESSIONGATE_SECRET="$(sessiongate gen-secret)" \
#     -e SESSIONGATE_UPSTREAM=http://app.internal:3000 sessiongate
#
# Stage 1 builds the dependencies alone first, so a change to src/ rebuilds only
# sessiongate itself. Cargo reads every target Cargo.toml declares before it
# builds one, so the benches are copied as they are (small, seldom changed; a
# stub per bench went stale with each new one) and only src/ is stubbed.
# tests/deploy.rs replays this stage against the manifest.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir -p src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bin sessiongate \
 && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin sessiongate

# Stage 2: distroless, no shell, no package manager; runs as the numeric nonroot user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/sessiongate /usr/local/bin/sessiongate
COPY deploy/container.yaml /etc/sessiongate/config.yaml
USER 65532:65532
EXPOSE 8080 8443 9091
# No shell in the image: the binary checks its own admin listener.
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/sessiongate", "healthcheck", "--config", "/etc/sessiongate/config.yaml"]
ENTRYPOINT ["/usr/local/bin/sessiongate"]
CMD ["--config", "/etc/sessiongate/config.yaml"]
