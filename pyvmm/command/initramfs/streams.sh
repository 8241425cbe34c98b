# Sourced by pyvmm command mode's /init (busybox sh, PID 1): run_relayed STDIN STDOUT STDERR
# runs pyvmm_run (from /job.sh) with its streams relayed to and from those three ports,
# and returns its status once all its output is out.
#
# CMD's streams are anonymous pipes that three cats relay: a port can be open only once,
# and CMD must be able to open /dev/stdout again, as a shell's `echo x >/dev/stdout` and
# kselftest's runner do (a FIFO would not do either: opened again after its writer
# ended, it blocks where a pipe gives end of file).  Each pipe is made by a background
# pipeline whose other end a sleep holds until CMD has its own, opened through /proc.
run_relayed() {
    local holder_in relay_out relay_err relay waited status rounds left dir pid
    # /init itself holds the three ports open until the machine stops: once the stdin
    # relay has read to the end, the host closes that port, and a write to it (CMD may
    # open any /dev/vport*) would wait for the host forever; held, it is EBUSY at once.
    exec 4<"$1" 5>"$2" 6>"$3" || fail "cannot open the command's ports"
    cat <&4 3>&- 4<&- 5>&- 6>&- | sleep 2147483647 3>&- 4<&- 5>&- 6>&- &
    holder_in=$!
    sleep 2147483647 3>&- 4<&- 5>&- 6>&- | cat >&5 3>&- 4<&- 5>&- 6>&- &
    relay_out=$!
    sleep 2147483647 3>&- 4<&- 5>&- 6>&- | cat >&6 3>&- 4<&- 5>&- 6>&- &
    relay_err=$!
    # Each pipe is there once the process has it as its stdin (until then, /init's console).
    waited=0
    while ! [ -p "/proc/$holder_in/fd/0" ] || ! [ -p "/proc/$relay_out/fd/0" ] ||
            ! [ -p "/proc/$relay_err/fd/0" ]; do
        [ $waited -lt 500 ] || fail "the relays of the command's streams did not start"
        waited=$((waited + 1))
        usleep 10000
    done
    # CMD's own user owns its pipes, as it would had its shell made them.
    chown "$PYVMM_UID:$PYVMM_GID" "/proc/$holder_in/fd/0" "/proc/$relay_out/fd/0" \
        "/proc/$relay_err/fd/0" || fail "cannot give the command its streams"
    # An output relay runs the moment it has bytes (real-time, through the host's chrt; else
    # the highest nice), so what CMD wrote before a panic is out; the OOM killer spares it.
    for relay in $relay_out $relay_err; do
        chroot /newroot chrt -f -p 1 $relay >/dev/null 2>&1 || renice -n -20 -p $relay >/dev/null
        echo -1000 2>/dev/null >"/proc/$relay/oom_score_adj"
    done
    pyvmm_run <"/proc/$holder_in/fd/0" >"/proc/$relay_out/fd/0" 2>"/proc/$relay_err/fd/0" \
        4<&- 5>&- 6>&-
    status=$?

    # What CMD left running would hold its streams open: stop it, as poweroff would, so
    # the relays see the end of its output; the holders and the stdin relay too (bounded:
    # a process that cannot die is left, and then the relays are stopped as well).
    rounds=0
    while [ $rounds -lt 100 ]; do
        left=
        for dir in /proc/[0-9]*; do
            pid=${dir#/proc/}
            case " 1 $relay_out $relay_err " in *" $pid "*) continue ;; esac
            [ -e "$dir/exe" ] && left="$left $pid"  # not kernel threads, not zombies
        done
        [ -z "$left" ] && break
        kill -9 $left 2>/dev/null
        usleep 20000
        rounds=$((rounds + 1))
    done
    [ -z "$left" ] || kill -9 $relay_out $relay_err 2>/dev/null
    wait $relay_out $relay_err
    return $status
}
