#!/usr/bin/env bash
# Label Studio for development and tests, without Docker: its own virtual environment
# (its pins clash with dlvm's), started on loopback with a known admin and API token.
#
#   dlvm stack label-studio install   # create/refresh the venv (about 10 s with uv, 60-140 s with pip; 1 GB)
#   dlvm stack label-studio start     # install if needed, then run the server in the foreground
#   dlvm stack label-studio env       # print the DLVM_LABEL_STUDIO_* settings for this server
#
# (This file ships inside the dlvm package; `dlvm stack label-studio` runs it. Relative
# defaults below are relative to the current directory, like DLVM_HOME's ./.dlvm.)
#
# Settings (environment):
#   LABEL_STUDIO_VENV      venv directory           (default .venv-label-studio)
#   LABEL_STUDIO_DATA_DIR  database + uploads       (default .dlvm/label-studio)
#   LABEL_STUDIO_PORT      loopback port            (default 8080)
#   LOCAL_FILES_DOCUMENT_ROOT  folder whose files tasks may show (default $DLVM_HOME or ./.dlvm)
#   UV                     the uv installer to use (default: uv on PATH; dlvm passes its own);
#                          without one, or when it fails, pip installs instead
#   LABEL_STUDIO_USERNAME / LABEL_STUDIO_PASSWORD / LABEL_STUDIO_USER_TOKEN
#       the admin account and its API token. When unset, a random password and token are
#       generated once and kept in DATA_DIR/credentials.env (mode 600): no default secrets.
set -euo pipefail

LABEL_STUDIO_VERSION=1.23.2
VENV=${LABEL_STUDIO_VENV:-.venv-label-studio}
DATA_DIR=${LABEL_STUDIO_DATA_DIR:-.dlvm/label-studio}
PORT=${LABEL_STUDIO_PORT:-8080}
DOCUMENT_ROOT=${LOCAL_FILES_DOCUMENT_ROOT:-${DLVM_HOME:-$(pwd)/.dlvm}}
DOCUMENT_ROOT=$(mkdir -p "$DOCUMENT_ROOT" && cd "$DOCUMENT_ROOT" && pwd)
PYTHON=${PYTHON:-python3}
UV=${UV:-$(command -v uv || true)}

install() {
    if [[ -x "$VENV/bin/label-studio" ]] && [[ "$(cat "$VENV/.version" 2>/dev/null)" == "$LABEL_STUDIO_VERSION" ]]; then
        return 0
    fi
    echo "label_studio.sh: installing label-studio $LABEL_STUDIO_VERSION into $VENV" >&2
    # uv resolves and installs Label Studio's ~150 packages in seconds where pip takes minutes.
    if [[ -n "$UV" ]] && "$UV" venv --quiet --allow-existing --python "$PYTHON" "$VENV" \
        && VIRTUAL_ENV="$VENV" "$UV" pip install --quiet "label-studio==$LABEL_STUDIO_VERSION"; then
        echo "$LABEL_STUDIO_VERSION" > "$VENV/.version"
        return 0
    fi
    [[ -n "$UV" ]] && echo "label_studio.sh: uv could not install it; trying pip" >&2
    "$PYTHON" -m venv "$VENV"
    # (the grep drops pip's per-package notes about local index folders that do not exist)
    "$VENV/bin/pip" install --quiet --upgrade pip 2> >(grep -v 'is ignored: it is neither' >&2)
    "$VENV/bin/pip" install --quiet "label-studio==$LABEL_STUDIO_VERSION" 2> >(grep -v 'is ignored: it is neither' >&2)
    echo "$LABEL_STUDIO_VERSION" > "$VENV/.version"
}

credentials() {
    mkdir -p "$DATA_DIR"
    local file="$DATA_DIR/credentials.env"
    if [[ -z "${LABEL_STUDIO_USER_TOKEN:-}" ]]; then
        if [[ ! -f "$file" ]]; then
            (umask 077 && cat > "$file" <<EOF
LABEL_STUDIO_USERNAME=admin@dlvm.local
LABEL_STUDIO_PASSWORD=$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(18))')
LABEL_STUDIO_USER_TOKEN=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(20))')
EOF
            )
            echo "label_studio.sh: generated admin credentials in $file" >&2
        fi
        set -a; source "$file"; set +a
    fi
    : "${LABEL_STUDIO_USERNAME:?set LABEL_STUDIO_USERNAME with LABEL_STUDIO_USER_TOKEN}"
    : "${LABEL_STUDIO_PASSWORD:?set LABEL_STUDIO_PASSWORD with LABEL_STUDIO_USER_TOKEN}"
}

case "${1:-}" in
    install)
        install
        ;;
    start)
        install
        credentials
        export LABEL_STUDIO_USERNAME LABEL_STUDIO_PASSWORD LABEL_STUDIO_USER_TOKEN
        # Without the legacy-token switch, Label Studio refuses the admin token with 401.
        export LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true
        export LATEST_VERSION_CHECK=false COLLECT_ANALYTICS=false
        # Label Studio refuses webhooks to private and loopback addresses by default; dlvm's
        # receiver (dlvm feedback webhook) runs beside it on loopback.
        export USE_DEFAULT_BANNED_SUBNETS="${USE_DEFAULT_BANNED_SUBNETS:-false}"
        export SENTRY_DSN= FRONTEND_SENTRY_DSN=  # no error reports to a third party
        # Tasks show dlvm's images as /data/local-files/?d=PATH, PATH relative to this root:
        # by default dlvm's state directory, which is also DLVM_LABEL_STUDIO_FILES_ROOT's default.
        export LOCAL_FILES_SERVING_ENABLED=true LOCAL_FILES_DOCUMENT_ROOT="$DOCUMENT_ROOT"
        exec "$VENV/bin/label-studio" start --no-browser --internal-host 127.0.0.1 --port "$PORT" \
            --data-dir "$DATA_DIR"
        ;;
    env)
        credentials
        echo "DLVM_LABEL_STUDIO_URL=http://127.0.0.1:$PORT"
        echo "DLVM_LABEL_STUDIO_TOKEN=$LABEL_STUDIO_USER_TOKEN"
        echo "DLVM_LABEL_STUDIO_FILES_ROOT=$DOCUMENT_ROOT"
        ;;
    *)
        echo "usage: $0 install|start|env" >&2
        exit 2
        ;;
esac
