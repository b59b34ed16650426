#!/usr/bin/env bash
# Makes sure the machine's PostgreSQL (127.0.0.1:5432, user postgres, database test) and
# Redis (127.0.0.1:6379) are running, starting them with the machine's documented commands
# when they are down. Exits non-zero if one cannot be brought up.
set -uo pipefail
ok=0
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! pg_up; then
  echo "services: starting PostgreSQL" >&2
  if [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start >&2 || true
  fi
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi
pg_up && echo "services: PostgreSQL up" >&2 || { echo "services: PostgreSQL is DOWN" >&2; ok=1; }

if ! redis_up; then
  echo "services: starting Redis" >&2
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log >&2 || true
  for _ in $(seq 1 30); do redis_up && break; sleep 1; done
fi
redis_up && echo "services: Redis up" >&2 || { echo "services: Redis is DOWN" >&2; ok=1; }
exit $ok
