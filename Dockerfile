# syntax=docker/dockerfile:1
#
#   docker build -t sessiongate .
#   docker run --rm -p 8080:8080 -p 8443:8443 \
#     -e SESSIONGATE_SECRET="$(sessiongate gen-secret)" \
#     -e SESSIONGATE_UPSTREAM=http://app.internal:3000 sessiongate
#
# Stage 1 builds the dependencies alone first, so a change to src/ rebuilds only
# sessiongate itself.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/hot_path.rs \
 && echo 'fn main() {}' > benches/memory.rs \
 && cargo build --release --locked --bin sessiongate \
 && rm -rf src benches
COPY src ./src
COPY benches ./benches
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
