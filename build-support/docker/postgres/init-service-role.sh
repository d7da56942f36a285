#!/usr/bin/env bash
# Run once by the official postgres image (/docker-entrypoint-initdb.d/) when it initialises an
# empty data directory: the service's own login role, neither superuser nor allowed to create
# databases or roles, and the service's database, owned by that role (so its migrations may
# create tables in it; Postgres 15's `public` schema belongs to the database owner). The
# superuser `postgres` stays for the container alone: it may log in over the local socket
# (`docker compose exec users-db psql -U postgres`), never over TCP.
#
# Environment: SERVICE_DB, SERVICE_USER, SERVICE_PASSWORD; POSTGRES_USER and PGDATA come from
# the image. No `set -u`: the entrypoint sources scripts that are not executable.
set -eo pipefail

: "${SERVICE_DB:?SERVICE_DB is not set}"
: "${SERVICE_USER:?SERVICE_USER is not set}"
: "${SERVICE_PASSWORD:?SERVICE_PASSWORD is not set}"

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    --set=db="$SERVICE_DB" --set=role="$SERVICE_USER" --set=password="$SERVICE_PASSWORD" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
CREATE DATABASE :"db" OWNER :"role";
-- Only the owner (and the superuser) may connect to it.
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
SQL

# First match wins: the superuser is refused over TCP before the image's `host all all all`.
sed -i "1i host all ${POSTGRES_USER:-postgres} all reject" "$PGDATA/pg_hba.conf"
