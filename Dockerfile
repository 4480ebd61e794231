# One image with the three service binaries and `cascade-token` (signs test
# and service tokens, so production needs no Rust toolchain for one); each
# Deployment picks its binary with `command`.
# Build: docker build -t REGISTRY/cascade:TAG .
#
# Stage 1 builds release binaries with the pinned toolchain and Cargo.lock,
# by `make image-binaries`: the same recipe CI runs (.ci/run), so a binary
# missing from the build fails there, not first here.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    make image-binaries IMAGE_OUT=/out

# Stage 2: distroless (glibc, CA certificates, no shell, no package manager),
# running as the image's unprivileged user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
# MALLOC_ARENA_MAX=2: two glibc malloc arenas instead of one per busy thread
# (peak RSS -10 to -24 MiB, same speed; docs/decisions.md).
ENV CASCADE_LIFECYCLE__SERVER__HOST=0.0.0.0 \
    CASCADE_SCORING__SERVER__HOST=0.0.0.0 \
    CASCADE_OPPORTUNITY__SERVER__HOST=0.0.0.0 \
    CASCADE_LIFECYCLE__TELEMETRY__LOG_FORMAT=json \
    CASCADE_SCORING__TELEMETRY__LOG_FORMAT=json \
    CASCADE_OPPORTUNITY__TELEMETRY__LOG_FORMAT=json \
    MALLOC_ARENA_MAX=2
USER 65532:65532
EXPOSE 50051 50052 50053
ENTRYPOINT ["/usr/local/bin/cascade-lifecycle"]
