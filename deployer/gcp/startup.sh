#!/bin/bash
# erlmcp on a Compute Engine VM (Container-Optimized OS): the instance template's startup-script.
#
# 1. An access token for the VM's service account, from the metadata server.
# 2. Each configured secret's latest version, from Secret Manager's REST API: file secrets become files on tmpfs
#    (/run/erlmcp/secrets/KEY, mode 0400, owned by the server's UID 1000), the others lines of an env file
#    (/run/erlmcp/env, mode 0400, read by docker as root). Nothing is written to disk and no secret is ever printed:
#    payloads go from curl's output to shell variables to the files, tokens reach curl through its stdin.
# 3. A systemd unit running the server image with a read-only root filesystem, as UID 1000, without
#    capabilities, restarted whenever it stops; the secret files mounted read-only, their ERLMCP_* variables
#    pointing at them.
#
# It runs at every boot (/etc and /run do not survive a reboot on Container-Optimized OS, and secrets are read
# fresh). Usage: startup.sh [all|secrets|unit]: everything (the default); fetch the secrets only; print the unit.
# ERLMCP_METADATA_URL, ERLMCP_SECRET_MANAGER_URL and ERLMCP_RUN_DIR override Google's endpoints and /run/erlmcp,
# for tests only; the instance template never sets them.
set -euo pipefail

# The settings deployer/gcp/compute.py renders (the line below is replaced; shell-quoted values):
# @@SETTINGS@@

readonly METADATA_URL="${ERLMCP_METADATA_URL:-http://metadata.google.internal/computeMetadata/v1}"
readonly SECRET_MANAGER_URL="${ERLMCP_SECRET_MANAGER_URL:-https://secretmanager.googleapis.com/v1}"
readonly RUN_DIR="${ERLMCP_RUN_DIR:-/run/erlmcp}"
readonly SECRET_DIR="$RUN_DIR/secrets"
readonly ENV_FILE="$RUN_DIR/env"
readonly CONTAINER_SECRET_DIR=/run/secrets/erlmcp
readonly SERVER_UID=1000
readonly UNIT=/etc/systemd/system/erlmcp.service
readonly MAX_ATTEMPTS=8
readonly MAX_DELAY=30

log() {
  printf 'erlmcp-startup: %s\n' "$*" >&2
}

die() {
  log "$*"
  exit 1
}

# http_get URL HEADER: the body of a 200 answer on stdout. Network errors, 429 and 5xx are retried with
# exponential backoff (1 s, 2 s, 4 s... at most MAX_DELAY, MAX_ATTEMPTS tries); any other status fails at once.
# The header goes to curl through its configuration on stdin, so a bearer token never shows in a process list.
http_get() {
  local url=$1 header=$2 attempt=1 delay=1 response status
  while true; do
    response=$(printf 'header = "%s"\n' "$header" |
      curl --config - --silent --show-error --max-time 10 --write-out '\n%{http_code}' "$url") || response=$'\n000'
    status=${response##*$'\n'}
    case $status in
      200)
        printf '%s' "${response%$'\n'*}"
        return 0
        ;;
      000 | 429 | 5??) ;;
      *)
        log "GET $url: HTTP $status"
        return 1
        ;;
    esac
    if ((attempt >= MAX_ATTEMPTS)); then
      log "GET $url: HTTP $status after $attempt attempts; giving up"
      return 1
    fi
    log "GET $url: HTTP $status; retrying in ${delay}s"
    sleep "$delay"
    attempt=$((attempt + 1))
    delay=$((delay * 2 > MAX_DELAY ? MAX_DELAY : delay * 2))
  done
}

# json_string FIELD JSON: the string value of FIELD (a token or base64: no escapes), without running a program.
json_string() {
  local pattern="\"$1\"[[:space:]]*:[[:space:]]*\"([^\"]*)\""
  [[ $2 =~ $pattern ]] || return 1
  printf '%s' "${BASH_REMATCH[1]}"
}

access_token() {
  local body
  body=$(http_get "$METADATA_URL/instance/service-accounts/default/token" "Metadata-Flavor: Google") || return 1
  json_string access_token "$body"
}

# write_file PATH OWNER MODE: stdin into PATH, replaced atomically, never readable by anyone else meanwhile.
write_file() {
  local tmp
  tmp=$(mktemp "$(dirname "$1")/.incoming.XXXXXX")
  cat >"$tmp"
  chown "$2" "$tmp"
  chmod "$3" "$tmp"
  mv -f "$tmp" "$1"
}

fetch_secrets() {
  local token entry secret_id key env kind body data value env_lines=''
  umask 077
  mkdir -p "$SECRET_DIR"
  chown "$SERVER_UID:$SERVER_UID" "$SECRET_DIR"
  chmod 0500 "$SECRET_DIR"
  token=$(access_token) || die "no access token from the metadata server: is a service account attached to the VM?"
  for entry in "${SECRETS[@]}"; do
    IFS='|' read -r secret_id key env kind <<<"$entry"
    body=$(http_get "$SECRET_MANAGER_URL/projects/$PROJECT/secrets/$secret_id/versions/latest:access" \
      "Authorization: Bearer $token") ||
      die "cannot read secret $secret_id: create it (python -m deployer secrets apply) and let the VM's service account read it (roles/secretmanager.secretAccessor)"
    data=$(json_string data "$body") || die "secret $secret_id: the answer has no payload"
    printf '%s' "$data" | base64 -d >/dev/null 2>&1 || die "secret $secret_id: the payload is not base64"
    if [[ $kind == file ]]; then
      printf '%s' "$data" | base64 -d | write_file "$SECRET_DIR/$key" "$SERVER_UID:$SERVER_UID" 0400
    else
      value=$(printf '%s' "$data" | base64 -d)
      [[ $value != *$'\n'* ]] || die "secret $secret_id: $env takes one line"
      env_lines+="$env=$value"$'\n'
    fi
    log "read secret $secret_id ($key)"
  done
  printf '%s' "$env_lines" | write_file "$ENV_FILE" 0:0 0400
}

# The docker-credential-gcr helper (on Container-Optimized OS) for an image in Artifact Registry or gcr.io.
credential_helper() {
  local registry=${IMAGE%%/*}
  if [[ $registry == *gcr.io || $registry == *-docker.pkg.dev ]]; then
    printf 'ExecStartPre=-/usr/bin/docker-credential-gcr configure-docker --registries=%s\n' "$registry"
  fi
}

docker_arguments() {
  local entry key env kind
  local -a args=(run --rm --name erlmcp --read-only --user "$SERVER_UID:$SERVER_UID" --cap-drop ALL
    --security-opt no-new-privileges --tmpfs /tmp --tmpfs /var/run
    --publish "$PORT:$PORT" --publish "$METRICS_PORT:$METRICS_PORT"
    --env "ERLMCP_PORT=$PORT" --env "ERLMCP_METRICS_PORT=$METRICS_PORT" --env-file "$ENV_FILE"
    --volume "$SECRET_DIR:$CONTAINER_SECRET_DIR:ro")
  for entry in "${SECRETS[@]}"; do
    IFS='|' read -r _ key env kind <<<"$entry"
    if [[ $kind == file ]]; then
      args+=(--env "$env=$CONTAINER_SECRET_DIR/$key")
    fi
  done
  printf '%s ' "${args[@]}"
  printf '%s' "$IMAGE"
}

unit() {
  cat <<EOF
[Unit]
Description=erlmcp MCP server ($IMAGE)
Wants=network-online.target
After=network-online.target docker.service
Requires=docker.service

[Service]
Environment=HOME=/var/lib/erlmcp
ExecStartPre=-/usr/bin/docker rm --force erlmcp
$(credential_helper)
ExecStart=/usr/bin/docker $(docker_arguments)
ExecStop=/usr/bin/docker stop --time 30 erlmcp
Restart=always
RestartSec=5
TimeoutStartSec=600

[Install]
WantedBy=multi-user.target
EOF
}

main() {
  case ${1:-all} in
    secrets) fetch_secrets ;;
    unit) unit ;;
    all)
      fetch_secrets
      mkdir -p /var/lib/erlmcp
      unit | write_file "$UNIT" 0:0 0644
      systemctl daemon-reload
      systemctl restart erlmcp.service
      log "erlmcp.service started ($IMAGE)"
      ;;
    *) die "usage: startup.sh [all|secrets|unit]" ;;
  esac
}

main "$@"
