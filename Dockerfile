# One image for every stage; the role is picked by the command (see docker-compose.yml).
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev \
    libssl-dev zlib1g-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p wxstream && cp target/release/wxstream /usr/local/bin/wxstream

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl libssl3 \
    libcurl4 zlib1g && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 wxstream
COPY --from=build /usr/local/bin/wxstream /usr/local/bin/wxstream
WORKDIR /app
COPY topology ./topology
COPY schemas ./schemas
USER wxstream
ENTRYPOINT ["wxstream"]
CMD ["--help"]
