#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/with_services.sh: make sure PostgreSQL and Redis
# answer on 127.0.0.1 and export DATABASE_URL / REDIS_URL, and (for the tests) that promtool,
# nginx and turnserver are installed (bim_test_tools_ensure). Uses the machine's servers when they answer;
# otherwise starts throwaway ones from the installed binaries (installing the Debian packages
# when it can), says so, and stops them on exit. Never falls back to
# SQLite: the tests that need these services must run against them.
set -euo pipefail

BIM_PG_PORT=${BIM_PG_PORT:-5432}
BIM_REDIS_PORT=${BIM_REDIS_PORT:-6379}
BIM_THROWAWAY_DIR=${BIM_THROWAWAY_DIR:-$(mktemp -d /tmp/bim-services.XXXXXX)}
chmod 755 "$BIM_THROWAWAY_DIR"
_bim_cleanup=()

_pg_answers() { "$VENV_PY" -c "import psycopg; psycopg.connect('postgresql://postgres@127.0.0.1:$BIM_PG_PORT/postgres', connect_timeout=3).close()" 2>/dev/null; }
_redis_answers() { "$VENV_PY" -c "import redis; redis.Redis(host='127.0.0.1', port=$BIM_REDIS_PORT, socket_timeout=3).ping()" 2>/dev/null; }

_apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "services: installing Debian packages: $*"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "services: $* missing and cannot be installed here (need root and apt-get)" >&2
    return 1
  fi
}

_start_postgres() {
  local bindir
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$bindir" ]; then _apt_install postgresql; bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1); fi
  local data="$BIM_THROWAWAY_DIR/pg"
  echo "services: no PostgreSQL answered on 127.0.0.1:$BIM_PG_PORT; starting a throwaway one in $data"
  local run=()
  # initdb refuses to run as root: use the postgres system user the package created.
  if [ "$(id -u)" = 0 ]; then run=(runuser -u postgres --); fi
  mkdir -p "$data" && chown -R postgres "$BIM_THROWAWAY_DIR" 2>/dev/null || true
  "${run[@]}" "$bindir/initdb" -D "$data" -U postgres --auth=trust >/dev/null
  "${run[@]}" "$bindir/pg_ctl" -D "$data" -l "$BIM_THROWAWAY_DIR/pg.log" -w \
    -o "-p $BIM_PG_PORT -c listen_addresses=127.0.0.1 -k $BIM_THROWAWAY_DIR -c fsync=off" start >/dev/null
  _bim_cleanup+=("${run[*]} $bindir/pg_ctl -D $data -m immediate stop")
}

_start_redis() {
  command -v redis-server >/dev/null || _apt_install redis-server
  echo "services: no Redis answered on 127.0.0.1:$BIM_REDIS_PORT; starting a throwaway one"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$BIM_REDIS_PORT" --save "" --appendonly no \
    --dir "$BIM_THROWAWAY_DIR" --pidfile "$BIM_THROWAWAY_DIR/redis.pid" --logfile "$BIM_THROWAWAY_DIR/redis.log"
  for _ in $(seq 50); do _redis_answers && break; sleep 0.1; done
  _bim_cleanup+=("kill \$(cat $BIM_THROWAWAY_DIR/redis.pid)")
}

bim_services_stop() {
  local cmd
  for cmd in "${_bim_cleanup[@]}"; do eval "$cmd" >/dev/null 2>&1 || true; done
}

# The tests' own tools, from Debian packages: promtool (package prometheus, without its
# recommends: no node exporter) checks the alert rules and a live /metrics
# (tests/site/test_monitoring.py); nginx checks deploy/nginx.conf and fronts daphne
# (tests/site/test_nginx_conf.py); turnserver (package coturn) is the TURN and STUN server of
# the peer-to-peer tests (tests/turn.py, tests/p2p/); clang and lld build bench/simd_width.c. Those tests fail, never skip, when a tool
# is missing. The tests start their own turnserver; the package's service, which systemd would
# start listening on every interface, is stopped and disabled as it is installed.
bim_test_tools_ensure() {
  local missing=()
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
  command -v turnserver >/dev/null || missing+=(coturn)
  # clang and wasm-ld build bench/simd_width.c natively and for WebAssembly
  # (tests/test_bench_simd_width_quick.py).
  command -v clang >/dev/null || missing+=(clang)
  command -v wasm-ld >/dev/null || missing+=(lld)
  [ ${#missing[@]} -eq 0 ] || _apt_install --no-install-recommends "${missing[@]}" \
    || echo "services: ${missing[*]} missing: their tests will fail" >&2
  if [ ${#missing[@]} -gt 0 ] && [[ " ${missing[*]} " == *" coturn "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now coturn >/dev/null 2>&1 || true
  fi
}

bim_services_ensure() {
  _pg_answers || _start_postgres
  _pg_answers || { echo "services: PostgreSQL still not answering" >&2; return 1; }
  _redis_answers || _start_redis
  _redis_answers || { echo "services: Redis still not answering" >&2; return 1; }
  export DATABASE_URL="${BIM_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:$BIM_PG_PORT/bim}"
  export REDIS_URL="${BIM_TEST_REDIS_URL:-redis://127.0.0.1:$BIM_REDIS_PORT/9}"
  echo "services: PostgreSQL and Redis answer on 127.0.0.1:$BIM_PG_PORT and :$BIM_REDIS_PORT"
}
