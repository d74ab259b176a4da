# Skald: the daemon (skald) and the CLI (skaldctl) on Debian 12.
#   docker build -t skald .
#   docker run -e SKALD_DATABASE_URL=postgresql://... -p 7070:7070 skald
# The embedded default needs neither Docker nor this file; see README.md.
FROM debian:bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
      pkg-config libpq-dev libuv1-dev libcjson-dev libhttp-parser-dev \
      libcurl4-openssl-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSKALD_TESTS=OFF \
 && cmake --build build -j"$(nproc)" --target skald skaldctl demo_service

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq5 libuv1 libcjson1 \
      libhttp-parser2.9 libcurl4 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/skald skald
COPY --from=build /src/build/skald /src/build/skaldctl /src/build/demo_service \
     /usr/local/bin/
USER skald
# Beyond loopback the daemon requires API keys: create one first with
#   skaldctl keys create NAME   (see docker-compose.yml)
ENV SKALD_LISTEN=0.0.0.0:7070
EXPOSE 7070
ENTRYPOINT ["skald"]
