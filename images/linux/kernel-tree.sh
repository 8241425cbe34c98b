# Sourced by build-linux.sh and build-linux-debug.sh: the steps both kernels
# share.  Debian's linux-source-6.1 is the source (installed on first use, with
# the tools a build needs); each kernel has a build tree of its own, unpacked
# once and configured from tinyconfig plus fragments whose every line is checked.
kernel_tarball=/usr/src/linux-source-6.1.tar.xz
kernel_tree_script="${BASH_SOURCE[0]}"

# Install linux-source-6.1 and the build tools unless the source is there.
kernel_source_install() {
    [ -f "$kernel_tarball" ] && return 0
    local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq linux-source-6.1 \
        bc flex bison libelf-dev libssl-dev >/dev/null
}

# kernel_stamp FILE...: the cache key of a kernel built from FILEs: their hash
# (with this script's) and the source's size.
kernel_stamp() {
    echo "$(cat "$@" "$kernel_tree_script" | sha256sum | cut -c1-16)-$(stat -c %s "$kernel_tarball")"
}

# kernel_tree_configure NAME BUILD FRAGMENT...: BUILD holds the source
# (unpacked once) configured as tinyconfig + the FRAGMENTs; a line of theirs
# that doesn't hold after olddefconfig fails the build, named by NAME.
kernel_tree_configure() {
    local name="$1" build="$2"
    shift 2
    if [ ! -f "$build/Makefile" ]; then
        rm -rf "$build"
        mkdir -p "$build"
        echo "$name: unpacking $kernel_tarball" >&2
        tar -xJf "$kernel_tarball" -C "$build" --strip-components=1
    fi
    cat "$@" > "$build/pyvmm-fragment.config"
    (
        cd "$build"
        make -s tinyconfig >/dev/null
        scripts/kconfig/merge_config.sh -m .config pyvmm-fragment.config >/dev/null
        make -s olddefconfig >/dev/null
        missing=0
        while IFS= read -r line; do
            case "$line" in ''|'#'*) continue ;; esac
            option="${line%%=*}"; want="${line#*=}"
            if [ "$want" = n ]; then
                grep -q "^$option=" .config && { echo "$name: $option is set, wanted off" >&2; missing=1; }
            else
                grep -qx "$line" .config || { echo "$name: $option is not $want" >&2; missing=1; }
            fi
        done < pyvmm-fragment.config
        [ "$missing" -eq 0 ]
    )
}

# Built kernels are also kept by stamp outside the checkout, so a fresh clone
# (CI's) copies its kernel in a second instead of compiling it for minutes.
# The directory is ours alone (0700, not a link); the newest three of each
# kernel stay.
kernel_cache=/var/tmp/pyvmm-images

kernel_cache_usable() {
    [ -d "$kernel_cache" ] || mkdir -m 0700 "$kernel_cache" 2>/dev/null || true
    [ -d "$kernel_cache" ] && [ ! -L "$kernel_cache" ] && [ -O "$kernel_cache" ] \
        && [ -z "$(find "$kernel_cache" -maxdepth 0 -perm /022)" ]
}

# kernel_cache_fetch NAME STAMP OUT: OUT becomes the cached build of STAMP, if one is kept.
kernel_cache_fetch() {
    local entry="$kernel_cache/$1-$2" out="$3"
    kernel_cache_usable && [ "$(cat "$entry/stamp" 2>/dev/null)" = "$2" ] || return 1
    mkdir -p "$(dirname "$out")"
    rm -rf "$out.tmp"
    cp -a "$entry" "$out.tmp" && rm -rf "$out" && mv "$out.tmp" "$out"
}

# kernel_cache_store NAME STAMP OUT: keep OUT (a finished build of STAMP).
kernel_cache_store() {
    local entry="$kernel_cache/$1-$2" out="$3"
    kernel_cache_usable && [ ! -e "$entry" ] || return 0
    local staging
    staging="$(mktemp -d "$kernel_cache/.$1.XXXXXX")"
    # (touched after the copy: the age the pruning goes by is the entry's own)
    if cp -a "$out/." "$staging/" && touch "$staging" && mv -T "$staging" "$entry"; then
        # shellcheck disable=SC2012  # names are ours: NAME-STAMP, no odd characters
        ls -dt "$kernel_cache/$1-"* | tail -n +4 | xargs -r rm -rf
    else
        rm -rf "$staging"
    fi
}
