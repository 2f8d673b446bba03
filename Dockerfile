# One static binary (musl, rustls: no OpenSSL, no libc) on distroless,
# running as the non-root user 65532 the chart expects.
#   docker build -t ghcr.io/hookwarden/hookwarden:0.1.0 .
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin hookwarden \
 && cp target/x86_64-unknown-linux-musl/release/hookwarden /hookwarden

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /hookwarden /hookwarden
USER 65532:65532
ENTRYPOINT ["/hookwarden"]
