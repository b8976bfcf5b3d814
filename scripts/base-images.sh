#!/usr/bin/env bash
# Build local Docker base images from Debian packages, so that task folders
# written as in the MECAnywhere guide (FROM python:3.9-slim, a Flask app,
# `python -m flask ...`) build on a machine that cannot reach any container
# registry. See docs/base-images.md.
#
#   scripts/base-images.sh            # build what is missing or out of date
#   scripts/base-images.sh --force    # rebuild everything from the packages
#   scripts/base-images.sh --check    # only say whether the images are up to date (exit 1 if not)
#
# What it builds:
#   meca/python:<suite>, meca/python:<X.Y>-<suite>
#       debootstrap --variant=minbase of the machine's own Debian suite, with
#       python3, python3-pip, python3-flask and ca-certificates, then
#       `docker import`. `python` runs python3; user `app` (uid 10001) exists;
#       the default user stays root.
#   meca/busybox:latest
#       /bin/busybox from Debian's busybox-static package, with its applets.
# and tags them with the names the guide and our examples use
# (python:3.9-slim, python:3.9, python:3-slim, python:<X.Y>-slim, python:slim,
# busybox:latest): LOCAL STAND-INS, Debian's Python, not the upstream images.
# A tag that exists and was not made by this script is never overwritten.
#
# Packages come from the Debian mirror the machine's apt already uses (read
# from the apt sources at run time). Override with MECA_DEBIAN_MIRROR and
# MECA_DEBIAN_SUITE (both). Cache: MECA_BASE_CACHE (default
# /var/cache/meca-node/base-images). Idempotent: when the images carry this
# recipe's hash in their labels, nothing is done.
set -euo pipefail

SCRIPT_PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"

CACHE_DIR="${MECA_BASE_CACHE:-/var/cache/meca-node/base-images}"
DEBOOTSTRAP_TIMEOUT_S="${MECA_DEBOOTSTRAP_TIMEOUT_S:-1800}"
LOCK_WAIT_S=1800
APP_UID=10001
PY_PACKAGES="python3,python3-pip,python3-flask,ca-certificates"
IMG_PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LABEL_OWNER="meca-node.base"          # =1 on every image this script makes

step() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "$SCRIPT_PATH" | sed '$d; s/^# \{0,1\}//'; }

FORCE=0
CHECK_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        --check) CHECK_ONLY=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument: $arg (use --force, --check or --help)" ;;
    esac
done

T0=$SECONDS
elapsed() { printf '%ss' "$((SECONDS - T0))"; }

# ------------------------------------------------------------ preflight ----
command -v docker >/dev/null 2>&1 || die "docker CLI not found. Run scripts/setup.sh first."
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (docker info failed). Run scripts/setup.sh, then re-run."
command -v dpkg >/dev/null 2>&1 || die "dpkg not found: this script builds images from Debian packages and needs a Debian (or Debian-based) machine with apt."
ARCH="$(dpkg --print-architecture)"

# Read the mirror URI, suite and keyring of the machine's main Debian apt
# source: the first `deb` entry with component `main` whose suite is the
# machine's own codename (not -security/-updates/-backports).
read_apt_source() {
    python3 - <<'PY'
import glob, os, re, sys

def codename():
    try:
        with open('/etc/os-release') as f:
            for line in f:
                k, _, v = line.strip().partition('=')
                if k == 'VERSION_CODENAME':
                    return v.strip('"')
    except OSError:
        pass
    return ''

entries = []   # (types, uris, suites, components, signed_by)

def one_line(path):
    with open(path, errors='replace') as f:
        for raw in f:
            line = raw.split('#', 1)[0].strip()
            m = re.match(r'^(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$', line)
            if not m:
                continue
            opts = dict(o.split('=', 1) for o in (m.group(2) or '').split() if '=' in o)
            entries.append(([m.group(1)], [m.group(3)], [m.group(4)],
                            m.group(5).split(), opts.get('signed-by', '')))

def deb822(path):
    with open(path, errors='replace') as f:
        text = f.read()
    for para in re.split(r'\n[ \t]*\n', text):
        fields, key = {}, None
        for raw in para.splitlines():
            if raw.startswith('#'):
                continue
            if raw[:1] in (' ', '\t') and key:
                fields[key] += '\n' + raw.strip()
                continue
            if ':' in raw:
                key, _, val = raw.partition(':')
                key = key.strip().lower()
                fields[key] = val.strip()
        if not fields or fields.get('enabled', 'yes').strip().lower() == 'no':
            continue
        entries.append((fields.get('types', '').split(), fields.get('uris', '').split(),
                        fields.get('suites', '').split(), fields.get('components', '').split(),
                        fields.get('signed-by', '').strip()))

files = []
if os.path.isfile('/etc/apt/sources.list'):
    files.append('/etc/apt/sources.list')
files += sorted(glob.glob('/etc/apt/sources.list.d/*.list') + glob.glob('/etc/apt/sources.list.d/*.sources'),
                key=os.path.basename)
for p in files:
    try:
        (deb822 if p.endswith('.sources') else one_line)(p)
    except OSError:
        pass

name = codename()
bad_suffix = ('-security', '-updates', '-backports', '-proposed-updates', '-proposed')
cands = []
for types, uris, suites, comps, signed in entries:
    if 'deb' not in types or 'main' not in comps:
        continue
    for uri in uris:
        if 'debian-security' in uri:
            continue
        for suite in suites:
            if suite.endswith(bad_suffix) or suite.endswith('/updates'):
                continue
            cands.append((uri, suite, signed))
pick = [c for c in cands if name and c[1] == name]
if not pick:
    pick = [c for c in cands if c[0].rstrip('/').endswith('/debian')]
if not pick:
    sys.exit(1)
uri, suite, signed = pick[0]
keyring = signed if signed and '\n' not in signed and os.path.isfile(signed) else ''
print(uri)
print(suite)
print(keyring)
PY
}

if [ -n "${MECA_DEBIAN_MIRROR:-}" ] || [ -n "${MECA_DEBIAN_SUITE:-}" ]; then
    if [ -z "${MECA_DEBIAN_MIRROR:-}" ] || [ -z "${MECA_DEBIAN_SUITE:-}" ]; then
        die "set both MECA_DEBIAN_MIRROR and MECA_DEBIAN_SUITE, or neither."
    fi
    MIRROR="$MECA_DEBIAN_MIRROR"; SUITE="$MECA_DEBIAN_SUITE"; KEYRING=""
else
    command -v python3 >/dev/null 2>&1 || die "python3 not found (needed to read the apt sources). Run scripts/setup.sh first."
    src="$(read_apt_source)" \
        || die "no Debian apt source with component 'main' found in /etc/apt/sources.list or /etc/apt/sources.list.d/ (looked for the machine's own suite, not -security/-updates). Add one, or set MECA_DEBIAN_MIRROR=<mirror URI> and MECA_DEBIAN_SUITE=<suite>, then re-run."
    { read -r MIRROR; read -r SUITE; read -r KEYRING || true; } <<<"$src"
fi
case "$MIRROR" in
    http://*|https://*|file:/*) ;;
    *) die "the apt source's mirror URI '$MIRROR' is not http(s):// or file:/, which debootstrap needs. Set MECA_DEBIAN_MIRROR and MECA_DEBIAN_SUITE to a plain mirror and re-run." ;;
esac

# The recipe hash: this script's text, the suite and the architecture. Any
# change to the script rebuilds the images (the mirror is not part of it).
RECIPE="$( { cat "$SCRIPT_PATH"; printf '\n%s %s\n' "$SUITE" "$ARCH"; } | sha256sum | cut -c1-16)"

PY_REF="meca/python:$SUITE"
BB_REF="meca/busybox:latest"

# ------------------------------------------------------------- helpers ----
label_of() {  # REF LABEL -> value, or empty
    docker image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null | sed 's/^<no value>$//'
}
image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
# An image is ours when it carries our label and is a single imported layer
# (task images built FROM ours inherit the label but have more layers).
is_ours() {
    [ "$(label_of "$1" "$LABEL_OWNER")" = "1" ] \
        && [ "$(docker image inspect -f '{{len .RootFS.Layers}}' "$1" 2>/dev/null)" = "1" ]
}
is_current() { is_ours "$1" && [ "$(label_of "$1" meca-node.recipe)" = "$RECIPE" ]; }
human_size() { docker image inspect -f '{{.Size}}' "$1" 2>/dev/null | awk '{printf "%.1f MB", $1/1000000}'; }

TAGS_CHANGED=0
# Point NAME at REF's image, unless NAME exists and is not ours.
tag_standin() {  # REF NAME
    local ref="$1" name="$2" want have
    want="$(image_id "$ref")"
    have="$(image_id "$name")"
    if [ -z "$have" ]; then
        docker tag "$ref" "$name"
        info "tagged $name"
        TAGS_CHANGED=1
    elif [ "$have" = "$want" ]; then
        :
    elif is_ours "$name"; then
        docker tag "$ref" "$name"
        info "re-tagged $name (was an older build of this script)"
        TAGS_CHANGED=1
    else
        warn "$name already exists and was not made by this script (probably the real upstream image); leaving it as it is. Tasks FROM $name will build on it."
    fi
}

PY_STANDINS=()
python_standins() {  # PYMINOR
    PY_STANDINS=("python:3.9-slim" "python:3.9" "python:3-slim" "python:$1-slim" "python:slim")
}

ensure_tags() {
    local pyminor
    pyminor="$(label_of "$PY_REF" meca-node.python-minor)"
    [ -n "$pyminor" ] && docker tag "$PY_REF" "meca/python:$pyminor-$SUITE"
    python_standins "$pyminor"
    local t
    for t in "${PY_STANDINS[@]}"; do tag_standin "$PY_REF" "$t"; done
    tag_standin "$BB_REF" "busybox:latest"
}

# ------------------------------------------------------- up-to-date check ----
step "Base images: Debian $SUITE ($ARCH) from $MIRROR, recipe $RECIPE"
if [ "$FORCE" -eq 0 ] && is_current "$PY_REF" && is_current "$BB_REF"; then
    if [ "$CHECK_ONLY" -eq 1 ]; then
        info "up to date"
        exit 0
    fi
    ensure_tags
    pyver="$(label_of "$PY_REF" meca-node.python)"
    [ "$TAGS_CHANGED" -eq 1 ] && info "(restored missing stand-in tags)"
    step "Up to date: $PY_REF (Debian $SUITE's Python $pyver, Flask $(label_of "$PY_REF" meca-node.flask)) and $BB_REF; nothing to build ($(elapsed))"
    exit 0
fi
if [ "$CHECK_ONLY" -eq 1 ]; then
    info "not up to date (missing, or built by another version of this script): run scripts/base-images.sh"
    exit 1
fi

# Building needs root (debootstrap, chroot). Re-run through sudo if we can.
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        step "Building needs root: re-running with sudo"
        exec sudo -E "$SCRIPT_PATH" "$@"
    fi
    die "building the base images needs root (debootstrap and chroot), and sudo is not available. Run as root: $SCRIPT_PATH $*"
fi

mkdir -p "$CACHE_DIR" || die "cannot create the cache directory $CACHE_DIR (set MECA_BASE_CACHE to a writable place)."
exec 9>"$CACHE_DIR/.lock"
if ! flock -n 9; then
    step "Another base-images run holds $CACHE_DIR/.lock; waiting (up to ${LOCK_WAIT_S}s)"
    flock -w "$LOCK_WAIT_S" 9 || die "timed out waiting for $CACHE_DIR/.lock; is another scripts/base-images.sh stuck? (see ps), then re-run."
fi

WORK_DIRS=()
# Remove a scratch root file system: unmount anything debootstrap left
# mounted inside it first, and never cross into another file system.
safe_rm_tree() {
    local dir="$1" m
    [ -d "$dir" ] || return 0
    while read -r m; do
        if [ -n "$m" ]; then umount -l "$m" 2>/dev/null || true; fi
    done < <(awk -v d="$dir" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/self/mounts | sort -r)
    if awk -v d="$dir" '$2 == d || index($2, d "/") == 1 {found=1} END {exit !found}' /proc/self/mounts; then
        warn "something is still mounted under $dir; not removing it (unmount it and delete it by hand)."
        return 0
    fi
    rm -rf --one-file-system "$dir"
}
cleanup() {
    local d
    for d in "${WORK_DIRS[@]}"; do safe_rm_tree "$d"; done
}
trap cleanup EXIT

# apt-get install / download, refreshing the package lists once on failure.
# Output goes to $CACHE_DIR/apt.log; its tail is shown when it fails.
apt_retry() {
    local log="$CACHE_DIR/apt.log"
    if ! DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l "$@" >"$log" 2>&1; then
        info "$1 ${2:-} failed; refreshing the package lists (apt-get update) and retrying"
        apt-get update -qq || die "apt-get update failed; check the machine's apt sources and network, then re-run."
        if ! DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l "$@" >"$log" 2>&1; then
            tail -n 15 "$log" | sed 's/^/       | /' >&2
            return 1
        fi
    fi
}

# Run a long command with its output in LOG, printing a progress line every
# 15 s and stopping it after LIMIT seconds.
run_logged() {  # LOG LIMIT cmd...
    local log="$1" limit="$2" pid start last=0 rc
    shift 2
    : >"$log"
    timeout --kill-after=30 "$limit" "$@" >>"$log" 2>&1 &
    pid=$!
    start=$SECONDS
    last=$SECONDS
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        if ((SECONDS - last >= 15)); then
            last=$SECONDS
            info "... $((SECONDS - start))s: $(tail -n 1 "$log" 2>/dev/null | cut -c1-110)"
        fi
    done
    rc=0
    wait "$pid" || rc=$?
    return "$rc"
}

import_image() {  # TARBALL REF CHANGE...
    local tarball="$1" ref="$2"
    shift 2
    local args=() c
    for c in "$@"; do args+=(--change "$c"); done
    docker import "${args[@]}" --message "meca-node scripts/base-images.sh recipe $RECIPE" \
        "$tarball" "$ref" >/dev/null \
        || die "docker import of $tarball as $ref failed (see above). Check disk space (df -h /var/lib/docker) and re-run."
}

# ------------------------------------------------------- python image ----
build_python() {
    local tarball="$CACHE_DIR/python-$SUITE-$ARCH-$RECIPE.tar"
    local meta="$tarball.meta"
    if [ "$FORCE" -eq 1 ] || [ ! -s "$tarball" ] || [ ! -s "$meta" ]; then
        command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || {
            step "Installing debootstrap (apt-get)"
            apt_retry apt-get install -y -q debootstrap \
                || die "apt-get install debootstrap failed (see above); install it by hand and re-run."
        }
        local work rootfs log="$CACHE_DIR/debootstrap.log"
        work="$(mktemp -d "$CACHE_DIR/work.python.XXXXXX")"
        WORK_DIRS+=("$work")
        rootfs="$work/rootfs"
        mkdir -p "$CACHE_DIR/debs"
        local kr=()
        [ -n "$KEYRING" ] && kr=(--keyring="$KEYRING")
        step "debootstrap --variant=minbase $SUITE from $MIRROR with $PY_PACKAGES (a few minutes; log: $log)"
        local rc=0
        run_logged "$log" "$DEBOOTSTRAP_TIMEOUT_S" \
            debootstrap --variant=minbase --arch="$ARCH" --include="$PY_PACKAGES" \
            --cache-dir="$CACHE_DIR/debs" "${kr[@]}" "$SUITE" "$rootfs" "$MIRROR" || rc=$?
        if [ "$rc" -ne 0 ]; then
            if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
                printf 'ERROR: debootstrap ran past %ss (MECA_DEBOOTSTRAP_TIMEOUT_S) and was stopped. Last lines of %s:\n' "$DEBOOTSTRAP_TIMEOUT_S" "$log" >&2
            else
                printf 'ERROR: debootstrap failed (exit %s). Last lines of %s:\n' "$rc" "$log" >&2
            fi
            tail -n 25 "$log" | sed 's/^/       | /' >&2
            printf '       Check that the mirror %s answers (apt-get update) and that there is disk space in %s, then re-run.\n' "$MIRROR" "$CACHE_DIR" >&2
            exit 1
        fi
        info "debootstrap done ($(elapsed))"
        # Nothing may stay mounted inside the rootfs before we pack it.
        while read -r m; do umount -l "$m" 2>/dev/null || true; done \
            < <(awk -v d="$rootfs" 'index($2, d "/") == 1 {print $2}' /proc/self/mounts | sort -r)

        step "Configuring the python rootfs"
        # `python` and `pip` as in the upstream images.
        ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
        [ -e "$rootfs/usr/bin/pip" ] || ln -sf pip3 "$rootfs/usr/bin/pip"
        # Let `pip install` in a task's Dockerfile work as it does upstream
        # (Debian marks its Python externally managed; pip installs go to /usr/local).
        rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
        # A non-root user for tasks that want one; the default user stays root.
        chroot "$rootfs" /usr/sbin/useradd --uid "$APP_UID" --user-group --create-home --shell /bin/sh app \
            || die "useradd in the rootfs failed (see above)."
        # Keep later apt installs slim too, like the upstream slim images.
        mkdir -p "$rootfs/etc/dpkg/dpkg.cfg.d"
        cat >"$rootfs/etc/dpkg/dpkg.cfg.d/meca-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
        # Strip package lists, caches, docs and logs; host-specific files go too
        # (Docker provides resolv.conf, hostname and hosts at run time).
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
            "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/archives/partial/* \
            "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old \
            "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
            "$rootfs"/usr/share/lintian/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* \
            "$rootfs"/debootstrap
        find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
        find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
        rm -f "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname"
        : >"$rootfs/etc/hosts"
        find "$rootfs/dev" -mindepth 1 -delete 2>/dev/null || true

        local pyver flaskver
        pyver="$(chroot "$rootfs" /usr/bin/python3 -c 'import platform; print(platform.python_version())')" \
            || die "python3 does not run in the new rootfs (see above)."
        flaskver="$(chroot "$rootfs" /usr/bin/python3 -c 'import importlib.metadata as m; print(m.version("flask"))')" \
            || die "flask does not import in the new rootfs (see above)."
        info "Debian $SUITE: Python $pyver, Flask $flaskver"

        step "Packing the rootfs into $tarball"
        rm -f "$CACHE_DIR"/python-*.tar "$CACHE_DIR"/python-*.tar.meta
        tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" . \
            || die "tar of the rootfs failed (disk space in $CACHE_DIR?)."
        mv "$tarball.tmp" "$tarball"
        printf '%s\n%s\n' "$pyver" "$flaskver" >"$meta"
        safe_rm_tree "$work"
    else
        step "Using the cached rootfs $tarball"
    fi

    local pyver flaskver pyminor
    { read -r pyver; read -r flaskver; } <"$meta"
    pyminor="${pyver%.*}"
    local old
    old="$(image_id "$PY_REF")"
    step "docker import -> $PY_REF and meca/python:$pyminor-$SUITE"
    import_image "$tarball" "$PY_REF" \
        "ENV PATH=$IMG_PATH" \
        "ENV LANG=C.UTF-8" \
        "ENV PYTHON_VERSION=$pyver" \
        "LABEL $LABEL_OWNER=1 meca-node.image=python meca-node.recipe=$RECIPE meca-node.suite=$SUITE meca-node.arch=$ARCH meca-node.python=$pyver meca-node.python-minor=$pyminor meca-node.flask=$flaskver meca-node.note=\"local stand-in built from Debian packages, not the upstream python image\"" \
        'CMD ["python3"]'
    docker tag "$PY_REF" "meca/python:$pyminor-$SUITE"
    OLD_IDS+=("$old")
}

# ------------------------------------------------------ busybox image ----
build_busybox() {
    local tarball="$CACHE_DIR/busybox-$ARCH-$RECIPE.tar"
    local meta="$tarball.meta"
    if [ "$FORCE" -eq 1 ] || [ ! -s "$tarball" ] || [ ! -s "$meta" ]; then
        local work rootfs deb bbver
        work="$(mktemp -d "$CACHE_DIR/work.busybox.XXXXXX")"
        WORK_DIRS+=("$work")
        chmod 0755 "$work"
        mkdir -p "$work/dl"
        chown _apt "$work/dl" 2>/dev/null || true   # apt downloads as _apt
        step "apt-get download busybox-static"
        (cd "$work/dl" && apt_retry apt-get download busybox-static) \
            || die "apt-get download busybox-static failed (see above). Check the machine's apt sources, then re-run."
        local debs=("$work"/dl/busybox-static_*.deb)
        deb="${debs[0]}"
        [ -f "$deb" ] || die "apt-get download did not leave a busybox-static .deb in $work/dl."
        bbver="$(dpkg-deb -f "$deb" Version)"
        dpkg-deb -x "$deb" "$work/x" || die "dpkg-deb -x $deb failed."
        [ -x "$work/x/bin/busybox" ] || die "busybox-static $bbver has no /bin/busybox."

        step "Building the busybox rootfs (busybox-static $bbver)"
        rootfs="$work/rootfs"
        mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,root,home,proc,sys,dev,run,var,tmp}
        chmod 1777 "$rootfs/tmp"
        chmod 0700 "$rootfs/root"
        install -m 0755 "$work/x/bin/busybox" "$rootfs/bin/busybox"
        chroot "$rootfs" /bin/busybox --install -s || die "busybox --install -s failed in the rootfs."
        printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$rootfs/etc/passwd"
        printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
        rm -f "$CACHE_DIR"/busybox-*.tar "$CACHE_DIR"/busybox-*.tar.meta
        tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" . || die "tar of the busybox rootfs failed."
        mv "$tarball.tmp" "$tarball"
        printf '%s\n' "$bbver" >"$meta"
        safe_rm_tree "$work"
    else
        step "Using the cached busybox rootfs $tarball"
    fi
    local bbver old
    read -r bbver <"$meta"
    old="$(image_id "$BB_REF")"
    step "docker import -> $BB_REF"
    import_image "$tarball" "$BB_REF" \
        "ENV PATH=$IMG_PATH" \
        "LABEL $LABEL_OWNER=1 meca-node.image=busybox meca-node.recipe=$RECIPE meca-node.arch=$ARCH meca-node.busybox=$bbver meca-node.note=\"local stand-in built from Debian busybox-static, not the upstream busybox image\"" \
        'CMD ["sh"]'
    OLD_IDS+=("$old")
}

OLD_IDS=()
if [ "$FORCE" -eq 1 ] || ! is_current "$PY_REF"; then build_python; else step "$PY_REF is up to date"; fi
if [ "$FORCE" -eq 1 ] || ! is_current "$BB_REF"; then build_busybox; else step "$BB_REF is up to date"; fi

step "Tagging the stand-in names"
ensure_tags

# Drop our previous builds that no tag points at any more (kept if a task
# image or container still uses them).
for old in "${OLD_IDS[@]}"; do
    [ -n "$old" ] || continue
    if [ -z "$(docker image inspect -f '{{join .RepoTags " "}}' "$old" 2>/dev/null)" ]; then
        if docker rmi "$old" >/dev/null 2>&1; then old="${old#sha256:}"; info "removed the previous build ${old:0:12}"; fi
    fi
done

# ------------------------------------------------------------- verify ----
step "Verifying (docker run --network none)"
out="$(docker run --rm --network none python:3.9-slim python -c 'import flask, sys; print(sys.version.split()[0])' 2>&1)" \
    || die "python:3.9-slim does not run python with flask: $out"
if is_ours python:3.9-slim; then who="the local stand-in"; else who="not ours"; fi
info "python:3.9-slim ($who): python -c 'import flask, sys' -> Python $out"
out="$(docker run --rm --network none "$PY_REF" python -m flask --version 2>&1 | tr '\n' ' ')" \
    || die "$PY_REF cannot run python -m flask: $out"
info "$PY_REF python -m flask --version: $out"
out="$(docker run --rm --network none busybox:latest sh -c 'echo ok' 2>&1)" \
    || die "busybox:latest does not run sh: $out"
[ "$out" = "ok" ] || die "busybox:latest printed '$out' instead of 'ok'."
info "busybox:latest sh -c 'echo ok' -> ok"

pyver="$(label_of "$PY_REF" meca-node.python)"
step "Done in $(elapsed): $PY_REF $(human_size "$PY_REF") (Debian $SUITE's Python $pyver, Flask $(label_of "$PY_REF" meca-node.flask)), $BB_REF $(human_size "$BB_REF") (busybox-static $(label_of "$BB_REF" meca-node.busybox))"
info "stand-ins: ${PY_STANDINS[*]} -> $PY_REF; busybox:latest -> $BB_REF"
info "these are NOT the upstream images: python:3.9-slim here is Python $pyver. With registry access, 'docker pull python:3.9-slim' after 'docker rmi python:3.9-slim' gives the real one."
