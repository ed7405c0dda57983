#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer on loopback before the tests run:
# start them when installed but stopped, install them (Debian, as root) when
# missing; install redis-sentinel for tests/test_sentinel.py, which starts its
# own sentinels, and promtool for tests/test_prometheus.py. Prints what it did; exits non-zero when a service cannot be had.
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

# The Sentinel tests start their own sentinels: redis-sentinel, or else
# redis-server in sentinel mode (the same binary; Debian ships the name apart).
sentinel_runs() {  # start one sentinel on a free port for a moment: can this redis-server run them?
  local dir port pid ok=1
  dir=$(mktemp -d) || return 1
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  printf 'port %s\nbind 127.0.0.1\ndir %s\nsentinel monitor velro-probe 127.0.0.1 6379 1\n' "$port" "$dir" > "$dir/sentinel.conf"
  "$1" "$dir/sentinel.conf" --sentinel >/dev/null 2>&1 &
  pid=$!
  wait_for 5 redis-cli -h 127.0.0.1 -p "$port" sentinel masters && ok=0
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  rm -rf "$dir"
  return $ok
}

ensure_sentinel() {
  if command -v redis-sentinel >/dev/null; then echo "redis-sentinel: installed"; return 0; fi
  echo "redis-sentinel: not installed, installing"
  if apt_install redis-sentinel && command -v redis-sentinel >/dev/null; then echo "redis-sentinel: installed"; return 0; fi
  if command -v redis-server >/dev/null && sentinel_runs redis-server; then
    echo "redis-sentinel: cannot install; the tests run redis-server --sentinel"
    return 0
  fi
  echo "redis-sentinel: cannot install, and redis-server cannot stand in" >&2
  return 1
}

# tests/test_prometheus.py checks the shipped alert rules with promtool; a
# missing promtool fails that test rather than skipping it on every fresh clone.
# Debian ships promtool in the prometheus package (installing starts no server
# where invoke-rc.d is off, as in containers; the tests never need one).
ensure_promtool() {
  if command -v promtool >/dev/null; then echo "promtool: installed"; return 0; fi
  echo "promtool: not installed, installing"
  if apt_install --no-install-recommends prometheus && command -v promtool >/dev/null; then echo "promtool: installed"; return 0; fi
  echo "promtool: cannot install" >&2
  return 1
}

status=0
ensure_postgres || status=1
ensure_redis || status=1
ensure_sentinel || status=1
ensure_promtool || status=1
exit $status
