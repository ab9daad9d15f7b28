#!/bin/sh
# Entrypoint of docker-compose.yml's nats service: refuses to start without the passwords of
# nats.conf's users (an empty one would let anyone in as that user), then runs nats-server with
# the service's command.
set -eu
for var in NATS_INGEST_PASSWORD NATS_GATEWAY_PASSWORD; do
  eval "value=\${$var:-}"
  if [ "${#value}" -lt 16 ]; then
    echo "nats: $var is empty or shorter than 16 characters; set it in .env (see .env.example), e.g. to the output of \`openssl rand -hex 32\`" >&2
    exit 64
  fi
done
exec nats-server "$@"
