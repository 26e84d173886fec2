# Sourced by the end-to-end scripts, which tests/cli/main.rs runs inside
#   unshare --mount --net --pid --fork --mount-proc --propagation private
# It turns that private namespace into a throwaway server at 192.0.2.1: /etc and /var become
# overlays whose upper layers live in a tmpfs on $T, /run and /home are empty tmpfs, so the
# machine's accounts, sshd and home directories never change; the PID namespace takes every
# process (sshd too) down with the script, whatever happens.
# Needs: $T, the scratch directory.
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
