#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer on loopback before the tests run:
# start them when installed but stopped, install them (Debian, as root) when
# missing. Prints what it did; exits non-zero when a service cannot be had.
set -u

PG_HOST=${VELRO_TEST_PG_HOST:-127.0.0.1}
PG_PORT=${VELRO_TEST_PG_PORT:-5432}
REDIS_HOST=${VELRO_TEST_REDIS_HOST:-127.0.0.1}
REDIS_PORT=${VELRO_TEST_REDIS_PORT:-6379}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }

apt_install() {
  command -v apt-get >/dev/null || return 1
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1
}

wait_for() {  # wait_for <seconds> <command...>
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -ge "$deadline" ] && return 1
    sleep 0.5
  done
}

pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; }
redis_up() { [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; }

ensure_postgres() {
  if command -v pg_isready >/dev/null && pg_up; then echo "postgres: up on $PG_HOST:$PG_PORT"; return 0; fi
  if ! command -v pg_ctlcluster >/dev/null; then
    echo "postgres: not installed, installing"
    apt_install postgresql || { echo "postgres: cannot install" >&2; return 1; }
  fi
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  [ -n "$version" ] || { echo "postgres: no cluster found" >&2; return 1; }
  local conf=/etc/postgresql/$version/main/pg_hba.conf
  # The suite connects as postgres over TCP without a password (trust on loopback).
  if [ -f "$conf" ] && ! grep -q "velro-cache trust" "$conf"; then
    as_root sh -c "printf '# velro-cache trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n' | cat - '$conf' > '$conf.new' && mv '$conf.new' '$conf'"
  fi
  echo "postgres: starting cluster $version/main"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || as_root pg_ctlcluster "$version" main start
  wait_for 30 pg_up || { echo "postgres: did not come up" >&2; return 1; }
  echo "postgres: up on $PG_HOST:$PG_PORT"
}

ensure_redis() {
  if command -v redis-cli >/dev/null && redis_up; then echo "redis: up on $REDIS_HOST:$REDIS_PORT"; return 0; fi
  if ! command -v redis-server >/dev/null; then
    echo "redis: not installed, installing"
    apt_install redis-server || { echo "redis: cannot install" >&2; return 1; }
  fi
  echo "redis: starting on $REDIS_HOST:$REDIS_PORT"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for 15 redis_up || { echo "redis: did not come up" >&2; return 1; }
  echo "redis: up on $REDIS_HOST:$REDIS_PORT"
}

status=0
ensure_postgres || status=1
ensure_redis || status=1
exit $status
