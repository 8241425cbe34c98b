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
