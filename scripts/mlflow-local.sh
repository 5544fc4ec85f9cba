#!/usr/bin/env bash
# A real MLflow tracking server on 127.0.0.1, for the tests and for trying
# `come-repro runs export --mlflow`: mlflow (pinned) in its own venv (.mlflow/venv, apart
# from the project venv whose packages the golden scripts pin), a SQLite backend store and
# an artifact root under .mlflow/, served with its artifact proxy. Idempotent: `start` (the
# default) installs what is missing, starts the server unless it already answers and waits
# for /health; `stop` ends it; `url` prints its URL. Port: COME_MLFLOW_PORT (default 5055).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cmd="${1:-start}"
VERSION="3.17.2"
port="${COME_MLFLOW_PORT:-5055}"
url="http://127.0.0.1:$port"
state="$root/.mlflow"
PY="${PYTHON:-python3}"

healthy() {
  "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$url/health" 2>/dev/null
}

stop() {
  if [ -f "$state/server.pid" ]; then
    # The server runs in its own session: end its workers with it.
    kill -- "-$(cat "$state/server.pid")" 2>/dev/null || true
    rm -f "$state/server.pid"
  fi
}

install() {
  mkdir -p "$state"
  if [ ! -x "$state/venv/bin/python" ]; then
    echo "mlflow-local: creating $state/venv"
    "$PY" -m venv "$state/venv"
  fi
  have=$("$state/venv/bin/python" -c 'import mlflow; print(mlflow.__version__)' 2>/dev/null || true)
  if [ "$have" != "$VERSION" ]; then
    echo "mlflow-local: installing mlflow==$VERSION (a minute or two)"
    "$state/venv/bin/python" -m pip install --quiet --disable-pip-version-check "mlflow==$VERSION"
  fi
}

start() {
  if healthy; then
    echo "mlflow-local: up at $url"
    return
  fi
  install
  stop
  mkdir -p "$state/artifacts"
  setsid "$state/venv/bin/mlflow" server --host 127.0.0.1 --port "$port" --workers 1 \
    --backend-store-uri "sqlite:///$state/mlflow.db" \
    --artifacts-destination "$state/artifacts" >"$state/server.log" 2>&1 < /dev/null &
  echo $! > "$state/server.pid"
  for _ in $(seq 1 180); do
    if healthy; then
      echo "mlflow-local: up at $url (mlflow $VERSION, log $state/server.log)"
      return
    fi
    sleep 1
  done
  echo "mlflow-local: the server did not answer within 180 s; its log:" >&2
  tail -20 "$state/server.log" >&2 || true
  exit 1
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  url) echo "$url" ;;
  *) echo "usage: $0 [start|stop|url]" >&2; exit 2 ;;
esac
