#!/usr/bin/env bash
# Install everything the test suite needs, idempotently (CI calls this before the tests):
#   - redis-server (Debian package, brings redis-cli)
#   - the Cloud Tasks emulator in its own venv: .services/tasks-venv (gcloud-tasks-emulator 0.6.2
#     pins protobuf<5, which the project's google-cloud-firestore cannot share)
#   - the project venv .venv with `pip install -e '.[all]'`
# and checks java + the official Firestore and Pub/Sub emulator jars, which no package registry
# carries; a missing Pub/Sub emulator is installed as a Cloud SDK component when gcloud is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
SVC="${SVC_DIR:-.services}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server"
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server
fi

mkdir -p "$SVC"
if ! "$SVC/tasks-venv/bin/python" -c 'import gcloud_tasks_emulator' >/dev/null 2>&1; then
  echo "installing gcloud-tasks-emulator into $SVC/tasks-venv"
  "$PY" -m venv "$SVC/tasks-venv"
  "$SVC/tasks-venv/bin/pip" install -q 'gcloud-tasks-emulator==0.6.2'
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q -e '.[all]'

fail=0
if ! command -v java >/dev/null 2>&1; then
  echo "java not found: the Firestore emulator needs Java 17+ (Debian: apt-get install -y openjdk-17-jre-headless)" >&2
  fail=1
fi
jar="${FIRESTORE_EMULATOR_JAR:-}"
if [ -z "$jar" ] && command -v gcloud >/dev/null 2>&1; then
  jar="$(dirname "$(dirname "$(readlink -f "$(command -v gcloud)")")")/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar"
fi
if [ -z "$jar" ] || [ ! -f "$jar" ]; then
  cat >&2 <<MSG
Firestore emulator jar not found${jar:+ at $jar}.
It is not on PyPI, npm or in Debian. Install the package google-cloud-cli-firestore-emulator from
Google's Cloud SDK apt repository (https://cloud.google.com/sdk/docs/install#deb), or
'gcloud components install cloud-firestore-emulator', or set FIRESTORE_EMULATOR_JAR to a copy of
cloud-firestore-emulator.jar.
MSG
  fail=1
fi
pubsub_jar() {
  if [ -n "${PUBSUB_EMULATOR_JAR:-}" ]; then echo "$PUBSUB_EMULATOR_JAR"; return; fi
  command -v gcloud >/dev/null 2>&1 || return 0
  local lib
  lib="$(dirname "$(dirname "$(readlink -f "$(command -v gcloud)")")")/platform/pubsub-emulator/lib"
  ls "$lib"/cloud-pubsub-emulator-*-all.jar 2>/dev/null | sort | tail -n 1
}
if [ -z "$(pubsub_jar)" ] && command -v gcloud >/dev/null 2>&1; then
  echo "installing the Pub/Sub emulator (Cloud SDK component)"
  # an SDK from Google's apt repository takes the package; a standalone SDK, the component
  if apt-cache show google-cloud-cli-pubsub-emulator >/dev/null 2>&1; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y google-cloud-cli-pubsub-emulator || true
  else
    gcloud components install pubsub-emulator --quiet || true
  fi
fi
pjar="$(pubsub_jar)"
if [ -z "$pjar" ] || [ ! -f "$pjar" ]; then
  cat >&2 <<MSG
Pub/Sub emulator jar not found${pjar:+ at $pjar}.
Install the package google-cloud-cli-pubsub-emulator from Google's Cloud SDK apt repository, or
'gcloud components install pubsub-emulator', or set PUBSUB_EMULATOR_JAR to a copy of
cloud-pubsub-emulator-*-all.jar.
MSG
  fail=1
fi
if [ "$fail" -ne 0 ]; then exit 1; fi
echo "test dependencies ready: redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'), tasks emulator venv, .venv, java, $jar, $pjar"
