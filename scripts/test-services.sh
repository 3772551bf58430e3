#!/usr/bin/env bash
# Start or stop the real servers the integration tests use, all on 127.0.0.1:
#   Redis (redis-server), the Cloud Tasks emulator (scripts/tasks_emulator.py, own venv) and the
#   official Firestore and Pub/Sub emulators (java + the Cloud SDK's jars).
#
#   scripts/test-services.sh start     # writes .services/env (REDIS_URL, *_EMULATOR_HOST, ...)
#   set -a; . .services/env; set +a    # then pytest uses these servers instead of starting its own
#   scripts/test-services.sh stop
#
# Ports: REDIS_PORT (6390), TASKS_PORT (8123), FIRESTORE_PORT (8686), PUBSUB_PORT (8085). State dir: SVC_DIR (.services).
# Install what is missing with scripts/install-test-deps.sh. pytest does not need this script: the
# fixtures in tests/servers.py start any server the environment does not point at.
set -euo pipefail
cd "$(dirname "$0")/.."
D="$(mkdir -p "${SVC_DIR:-.services}" && cd "${SVC_DIR:-.services}" && pwd)"
REDIS_PORT="${REDIS_PORT:-6390}" TASKS_PORT="${TASKS_PORT:-8123}" FS_PORT="${FIRESTORE_PORT:-8686}"
PS_PORT="${PUBSUB_PORT:-8085}"

tcp_open() { python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5).close()' "$1"; }
http_ok() { python3 -c 'import sys,urllib.request as u; assert u.urlopen(sys.argv[1], timeout=1).read().strip() == b"Ok"' "$1"; }
wait_for() {  # wait_for NAME SECONDS LOG CMD...
  local name=$1 limit=$2 log=$3 t0=$SECONDS; shift 3
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS - t0 >= limit )); then
      echo "$name not ready after ${limit}s; last lines of $log:" >&2
      tail -n 20 "$log" >&2 || true
      stop; exit 1
    fi
    sleep 0.1
  done
}
fs_jar() {
  if [ -n "${FIRESTORE_EMULATOR_JAR:-}" ]; then echo "$FIRESTORE_EMULATOR_JAR"; return; fi
  local g; g="$(command -v gcloud)" || return 0
  echo "$(dirname "$(dirname "$(readlink -f "$g")")")/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar"
}
ps_jar() {
  if [ -n "${PUBSUB_EMULATOR_JAR:-}" ]; then echo "$PUBSUB_EMULATOR_JAR"; return; fi
  local g; g="$(command -v gcloud)" || return 0
  ls "$(dirname "$(dirname "$(readlink -f "$g")")")"/platform/pubsub-emulator/lib/cloud-pubsub-emulator-*-all.jar 2>/dev/null | sort | tail -n 1
}
need() {  # need CONDITION-CMD MESSAGE
  "${@:1:$#-1}" >/dev/null 2>&1 || { echo "${!#}" >&2; exit 1; }
}
start() {
  local jar pjar; jar="$(fs_jar)"; pjar="$(ps_jar)"
  need command -v redis-server "redis-server not found: run scripts/install-test-deps.sh (apt-get install -y redis-server)"
  need test -x "$D/tasks-venv/bin/python" "Cloud Tasks emulator venv missing: run scripts/install-test-deps.sh"
  need command -v java "java not found: install a JRE (Debian: apt-get install -y openjdk-17-jre-headless)"
  need test -f "$jar" "Firestore emulator jar not found ($jar): install google-cloud-cli-firestore-emulator from Google's Cloud SDK apt repository, or set FIRESTORE_EMULATOR_JAR"
  need test -f "$pjar" "Pub/Sub emulator jar not found: run scripts/install-test-deps.sh, or set PUBSUB_EMULATOR_JAR"
  for p in "$REDIS_PORT" "$TASKS_PORT" "$FS_PORT" "$PS_PORT"; do
    if tcp_open "$p" 2>/dev/null; then echo "port $p is already in use" >&2; exit 1; fi
  done
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --daemonize yes \
    --pidfile "$D/redis.pid" --logfile "$D/redis.log"
  "$D/tasks-venv/bin/python" -W ignore scripts/tasks_emulator.py start --port "$TASKS_PORT" --max-retries 3 -q \
    > "$D/tasks.log" 2>&1 & echo $! > "$D/tasks.pid"
  java -Duser.language=en -cp "$jar" com.google.cloud.datastore.emulator.firestore.CloudFirestore \
    --host 127.0.0.1 --port "$FS_PORT" > "$D/firestore.log" 2>&1 & echo $! > "$D/firestore.pid"
  java -jar "$pjar" --host=127.0.0.1 --port="$PS_PORT" > "$D/pubsub.log" 2>&1 & echo $! > "$D/pubsub.pid"
  wait_for redis 10 "$D/redis.log" redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping
  wait_for cloud-tasks-emulator 20 "$D/tasks.log" tcp_open "$TASKS_PORT"
  wait_for firestore-emulator 60 "$D/firestore.log" http_ok "http://127.0.0.1:$FS_PORT/"
  wait_for pubsub-emulator 60 "$D/pubsub.log" http_ok "http://127.0.0.1:$PS_PORT/"
  printf 'REDIS_URL=redis://127.0.0.1:%s/0\nCLOUD_TASKS_EMULATOR_HOST=127.0.0.1:%s\nFIRESTORE_EMULATOR_HOST=127.0.0.1:%s\nPUBSUB_EMULATOR_HOST=127.0.0.1:%s\nGOOGLE_CLOUD_PROJECT=pyloto-test\n' \
    "$REDIS_PORT" "$TASKS_PORT" "$FS_PORT" "$PS_PORT" > "$D/env"
  echo "servers ready; load them with: set -a; . $D/env; set +a"
}
stop() {
  local n pid
  for n in pubsub firestore tasks redis; do
    if [ -f "$D/$n.pid" ]; then
      pid="$(cat "$D/$n.pid")"
      kill "$pid" 2>/dev/null || true
      rm -f "$D/$n.pid"
    fi
  done
  rm -f "$D/env"
  return 0
}
case "${1:-}" in start) start ;; stop) stop ;; *) echo "usage: $0 start|stop" >&2; exit 2 ;; esac
