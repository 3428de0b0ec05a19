# For operators with Docker: the same image as `make image` (cmd/ozo-image) builds without a
# daemon — a static binary at /usr/local/bin/ozo-identity, user 65532 (distroless nonroot),
# /data owned by it, entrypoint `ozo-identity serve` — on distroless/static for its CA
# certificates, passwd and tzdata.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/ozo-identity ./cmd/ozo-identity \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ozo-identity /usr/local/bin/ozo-identity
COPY --from=build --chown=65532:65532 --chmod=0700 /out/data /data
ENV OZO_DATA_DIR=/data TMPDIR=/tmp SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
WORKDIR /data
VOLUME /data
EXPOSE 8090 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD ["/usr/local/bin/ozo-identity", "healthcheck", "--url", "http://127.0.0.1:9090/readyz?exclude=redis"]
ENTRYPOINT ["/usr/local/bin/ozo-identity"]
CMD ["serve"]
