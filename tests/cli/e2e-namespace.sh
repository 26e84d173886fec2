# Sourced by the end-to-end scripts, which tests/cli/main.rs runs inside
#   unshare --mount --net --pid --fork --mount-proc --propagation private
# It turns that private namespace into a throwaway server at 192.0.2.1: /etc and /var become
# overlays whose upper layers live in a tmpfs on $T, /run and /home are empty tmpfs, so the
# machine's accounts, sshd and home directories never change; the PID namespace takes every
# process (sshd too) down with the script, whatever happens.
# Needs: $T, the scratch directory, and $TIFFIN, the binary (for `provision` below).
umask 022   # the overlays take their upper directories' modes, and sshd checks them
step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

mount -t tmpfs -o mode=755 tmpfs "$T"
mkdir -p "$T"/etc.up "$T"/etc.work "$T"/var.up "$T"/var.work
mount -t overlay overlay -o lowerdir=/etc,upperdir="$T"/etc.up,workdir="$T"/etc.work /etc
mount -t overlay overlay -o lowerdir=/var,upperdir="$T"/var.up,workdir="$T"/var.work /var
# A private /run: no systemd in here, and sshd's pid file and privilege-separation dir stay ours.
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=755 tmpfs /home   # in case anything creates a home directory
mkdir -m 755 /run/sshd
ip link set lo up
ip addr add 192.0.2.1/32 dev lo

# The real sshd on 192.0.2.1:22, logging to $T/sshd.log; SSHD is its pid.
start_sshd() {
    /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config -o ListenAddress=192.0.2.1:22 2>"$T/sshd.log" &
    SSHD=$!
    for _ in $(seq 100); do
        [ -s /run/sshd.pid ] && (exec 3<>/dev/tcp/192.0.2.1/22) 2>/dev/null && return 0
        sleep 0.1
    done
    fail "sshd did not start: $(cat "$T/sshd.log")"
}

# sshd re-executes itself on SIGHUP and closes its socket meanwhile: after a reload, wait
# until it has logged listening once more and accepts a connection.
listening() { grep -c "Server listening" "$T/sshd.log" || true; }
provision() { # provision ARGS...: tiffin provision, then wait for sshd if it was reloaded
    local before rc=0
    before=$(listening)
    "$TIFFIN" provision "$@" >"$T/provision.out" 2>"$T/provision.err" || rc=$?
    cat "$T/provision.out"; cat "$T/provision.err" >&2
    if grep -q "reloaded sshd" "$T/provision.out"; then
        for _ in $(seq 100); do
            [ "$(listening)" -gt "$before" ] && (exec 3<>/dev/tcp/192.0.2.1/22) 2>/dev/null && return "$rc"
            sleep 0.1
        done
        fail "sshd did not come back after the reload: $(tail -5 "$T/sshd.log")"
    fi
    return "$rc"
}

