#!/bin/sh
# init-primary.sh - run once by the postgres image when it creates the primary's cluster
# (/docker-entrypoint-initdb.d/): walhalla's settings, the replication roles and slots.
set -eu
cat /etc/walhalla/primary.conf >>"$PGDATA/postgresql.conf"
# Replicas and walhalla connect over the compose network with passwords.
echo "host replication replicator,walhalla all scram-sha-256" >>"$PGDATA/pg_hba.conf"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" <<SQL
CREATE ROLE replicator LOGIN REPLICATION PASSWORD '$(cat /run/secrets/replicator-password)';
CREATE ROLE walhalla LOGIN REPLICATION PASSWORD '$(cat /run/secrets/walhalla-password)';
SELECT pg_create_physical_replication_slot('replica1');
SELECT pg_create_physical_replication_slot('replica2');
SELECT pg_create_physical_replication_slot('replica3');
SQL
