# hookwarden's image: one static binary (glibc linked statically; rustls, so
# no OpenSSL), the CA certificates for GitHub's TLS, and a passwd naming the
# non-root user 65532 the chart runs as. Nothing else: no shell, no libc.
#   docker build -t ghcr.io/hookwarden/hookwarden:0.1.0 .
# Without Docker, e2e/images makes the same image from the same two scripts
# (image/build-binary, image/rootfs) and this file's USER and ENTRYPOINT;
# tests/image.rs checks that they agree.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN image/build-binary /hookwarden && image/rootfs /hookwarden /rootfs

FROM scratch
COPY --from=build /rootfs /
USER 65532:65532
ENTRYPOINT ["/hookwarden"]
