#!/bin/bash
# End-to-end proof of `tiffin provision` with the real OpenSSH, run by tests/cli/provision.rs as
#   unshare --mount --net --pid --fork --mount-proc --propagation private bash provision_e2e.sh TIFFIN DIR
# Everything it changes lives in tmpfs and overlays of that mount namespace (/etc, /var, /run,
# /home, DIR) and in its own network namespace, so the machine's accounts and sshd never change; the
# PID namespace takes sshd down with the script, whatever happens.
set -euo pipefail
TIFFIN=$1
T=$2
. "$(dirname "$0")/e2e-namespace.sh"
ssh-keygen -A >/dev/null

step "fleet: two hosts, published before provisioning (so the release trees are root:root)"
F="$T/fleet"
"$TIFFIN" init "$F" >/dev/null
rm -r "$F/hosts/example"
for c in client1 client2; do
    ssh-keygen -q -t ed25519 -N '' -C "$c" -f "$T/$c"
    "$TIFFIN" host add "$c" --key "$T/$c.pub" --fleet "$F" >/dev/null
done
mkdir -p "$F/hosts/client1/files/etc/app"
echo s3cret >"$F/hosts/client1/files/etc/app/secret"
chmod 600 "$F/hosts/client1/files/etc/app/secret"
sed -i 's/^# sshd_extra = .*/sshd_extra = ["ClientAliveInterval 30"]/' "$F/fleet.toml"
cd "$F"
C=/var/lib/tiffin/chroots
# The releases' filesystem, small enough that one client's uploads could fill it were reports/
# not bounded (mode 755: sshd checks every component of the chroot path).
mkdir -p "$C"
mount -t tmpfs -o size=8m,mode=755 tmpfs "$C"
"$TIFFIN" publish

step "tiffin provision --dry-run"
"$TIFFIN" provision --dry-run
[ ! -e /etc/ssh/sshd_config.d/tiffin.conf ] || fail "dry run wrote the drop-in"
getent passwd tiffin-client1 && fail "dry run created an account"

# refused CHECK_RC PROVISION_RC KEY VALUE: with fleet.toml's KEY set to VALUE, `tiffin check`
# and `tiffin provision` fail with these exit codes and print the same message about KEY.
refused() {
    cp "$F/fleet.toml" "$T/fleet.toml.good"
    sed -i "s|^# $3 = .*|$3 = \"$4\"|" "$F/fleet.toml"
    grep -q "^$3 = \"$4\"" "$F/fleet.toml" || fail "could not set $3"
    local rc=0
    "$TIFFIN" check >"$T/check.out" 2>&1 || rc=$?
    [ "$rc" = "$1" ] || { cat "$T/check.out"; fail "check: exit $rc, expected $1"; }
    rc=0
    "$TIFFIN" provision >"$T/prov.out" 2>&1 || rc=$?
    [ "$rc" = "$2" ] || { cat "$T/prov.out"; fail "provision: exit $rc, expected $2"; }
    local said
    said=$(grep -o "fleet.toml: server\.${3#server.}[^ ]* \"$4\".*" "$T/check.out" | head -1)
    [ -n "$said" ] || { cat "$T/check.out"; fail "check does not name $3"; }
    grep -qF "$said" "$T/prov.out" || { cat "$T/prov.out"; fail "provision does not say what check says: $said"; }
    echo "refused by check (exit $1) and provision (exit $2): $said"
    cp "$T/fleet.toml.good" "$F/fleet.toml"
}

step "paths that are not tiffin's: refused by check and provision alike, nothing changed"
passwd=$(sha256sum /etc/passwd)
refused 2 2 sshd_dropin /etc/passwd
refused 2 2 sshd_dropin /etc/ssh/sshd_config
[ "$passwd" = "$(sha256sum /etc/passwd)" ] || fail "/etc/passwd changed"
printf 'PermitRootLogin no\n' >/etc/ssh/sshd_config.d/admin.conf
admin=$(stat -c '%i %a %s %Y' /etc/ssh/sshd_config.d/admin.conf)
refused 2 1 sshd_dropin /etc/ssh/sshd_config.d/admin.conf
[ "$admin" = "$(stat -c '%i %a %s %Y' /etc/ssh/sshd_config.d/admin.conf)" ] || fail "admin.conf changed"
rm /etc/ssh/sshd_config.d/admin.conf
home=$(stat -c '%U:%G %a' /home)
refused 2 2 chroot_root /home
mkdir -m 775 /home/shared /home/shared/alice
touch /home/shared/alice/.profile /home/shared/notes
refused 2 1 chroot_root /home/shared
[ "$(stat -c '%a' /home/shared)" = 775 ] || fail "provision changed the mode of /home/shared"
[ "$home" = "$(stat -c '%U:%G %a' /home)" ] || fail "/home changed"
[ ! -e /home/shared/.tiffin-chroot-root ] || fail "provision marked /home/shared"
getent passwd tiffin-client1 && fail "a refused provision created an account"
[ ! -e /etc/ssh/sshd_config.d/tiffin.conf ] || fail "a refused provision wrote the drop-in"

step "sshd starts (before provisioning, so provision must reload it)"
start_sshd

step "tiffin provision"
provision
# The logins below work only with the new drop-in, which the running sshd reads on SIGHUP.
grep -q "reloaded sshd (SIGHUP to pid" "$T/provision.out" || fail "sshd was not reloaded"
grep '^tiffin-client1:\*:' /etc/shadow || fail "tiffin-client1 has no '*' password field (locked?)"
ls -la "$C" "$C/client1" "$C/client1/releases"/*
stat -c '%n %U:%G %a' "$C/client1/CURRENT" /etc/tiffin/authorized_keys/tiffin-client1

S=(-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5)
as() { # as KEY USER: sftp batch from stdin
    sftp "${S[@]}" -i "$T/$1" -b - "$2@192.0.2.1"
}
denied() { # denied KEY USER BATCH: the batch must fail
    if printf '%s\n' "$3" | as "$1" "$2" >"$T/out" 2>&1; then
        cat "$T/out"; fail "allowed: $2 with key $1: $3"
    fi
    echo "denied as expected: $3 -> $(tail -1 "$T/out")"
}

step "client1 reads its release"
echo "get /CURRENT $T/got" | as client1 tiffin-client1
cmp "$T/got" "$C/client1/CURRENT"
ID=$(cat "$T/got")
echo "get /releases/$ID/files/etc/app/secret $T/secret" | as client1 tiffin-client1
echo s3cret | cmp - "$T/secret"
echo "ls -la /" | as client1 tiffin-client1

step "sshd gives host sessions the keepalive, sshd_extra's interval first; other accounts keep the global values"
# fleet.toml sets ClientAliveInterval 30 in sshd_extra, so provision leaves out its 15 but keeps its CountMax 4.
sshd -T -f /etc/ssh/sshd_config -C user=tiffin-client1,host=client1,addr=192.0.2.2 >"$T/eff" || fail "sshd -T: $(cat "$T/eff")"
grep -x 'clientaliveinterval 30' "$T/eff" || fail "tiffin-client1: $(grep clientalive "$T/eff")"
grep -x 'clientalivecountmax 4' "$T/eff" || fail "tiffin-client1: $(grep clientalive "$T/eff")"
sshd -T -f /etc/ssh/sshd_config | grep clientalive >"$T/eff-global"
sshd -T -f /etc/ssh/sshd_config -C user=root,host=client1,addr=192.0.2.2 | grep clientalive | cmp - "$T/eff-global" ||
    fail "root's keepalive differs from the global one: $(cat "$T/eff-global")"

step "client1 cannot list or read client2's chroot"
denied client1 tiffin-client1 "ls /../client2"
denied client1 tiffin-client1 "ls $C/client2"
denied client1 tiffin-client1 "get $C/client2/CURRENT $T/x"

step "client1 writes only under reports/"
echo report >"$T/report"
denied client1 tiffin-client1 "put $T/report /x"
denied client1 tiffin-client1 "put $T/report /releases/x"
denied client1 tiffin-client1 "mkdir /releases/$ID/y"
denied client1 tiffin-client1 "rm /CURRENT"
echo "put $T/report /reports/status.toml" | as client1 tiffin-client1
cmp "$T/report" "$C/client1/reports/status.toml"

step "no shell, no TTY, no forwarding"
out=$(ssh "${S[@]}" -i "$T/client1" tiffin-client1@192.0.2.1 id </dev/null 2>&1) || true
[[ $out != *uid=* ]] || fail "ssh ran a command: $out"
out=$(ssh "${S[@]}" -tt -i "$T/client1" tiffin-client1@192.0.2.1 id </dev/null 2>&1) || true
[[ $out != *uid=* ]] || fail "ssh -tt ran a command: $out"
echo "ssh id -> no command ran"
if ssh "${S[@]}" -i "$T/client1" -W 127.0.0.1:22 tiffin-client1@192.0.2.1 </dev/null >"$T/out" 2>&1; then
    fail "ssh -W forwarded: $(cat "$T/out")"
fi
echo "ssh -W denied: $(tail -1 "$T/out")"
if timeout 10 ssh "${S[@]}" -i "$T/client1" -o ExitOnForwardFailure=yes -N -R 2222:127.0.0.1:22 tiffin-client1@192.0.2.1 </dev/null >"$T/out" 2>&1; then
    fail "ssh -R forwarded"
fi
echo "ssh -R denied: $(tail -1 "$T/out")"

step "client2's key cannot log in as client1; it can as client2"
denied client2 tiffin-client1 "ls /"
echo "ls /" | as client2 tiffin-client2

step "another local account reads nothing of any host"
useradd --no-create-home alice
for p in "$C/client1/CURRENT" "$C/client1/releases/$ID/files/etc/app/secret"; do
    if setpriv --reuid=alice --regid=alice --clear-groups cat "$p" 2>/dev/null; then fail "alice read $p"; fi
done
if setpriv --reuid=alice --regid=alice --clear-groups ls "$C/client1" 2>/dev/null; then fail "alice listed client1"; fi
echo "alice: permission denied on client1's chroot"

step "reports/ is a bounded tmpfs: a client cannot fill the filesystem of the releases"
for c in client1 client2; do
    findmnt -n -o FSTYPE,OPTIONS "$C/$c/reports" | tee "$T/mnt"
    grep -q '^tmpfs .*nosuid,nodev,noexec.*size=1024k,nr_inodes=64,mode=700' "$T/mnt" || fail "$c/reports is not the bounded tmpfs"
done
[ -e "$C/.tiffin-chroot-root" ] || fail "the adopted chroot root is not marked"
head -c 10M /dev/zero >"$T/big"   # more than the whole 8 MB filesystem of the releases
denied client1 tiffin-client1 "put $T/big /reports/big"
echo "rm /reports/big" | as client1 tiffin-client1 >/dev/null 2>&1 || true
for i in $(seq 70); do echo "put $T/report /reports/many-$i"; done >"$T/many"
if as client1 tiffin-client1 <"$T/many" >"$T/out" 2>&1; then fail "70 files fit into reports/"; fi
echo "70 files: $(tail -1 "$T/out")"
df -h "$C" "$C/client1/reports"
mkdir -p "$F/hosts/client2/files/var/lib/app"
head -c 3M /dev/urandom >"$F/hosts/client2/files/var/lib/app/blob"
"$TIFFIN" publish client2 || fail "publish of client2 failed after client1 filled its reports/"
ID2=$(cat "$C/client2/CURRENT")
echo "get /releases/$ID2/files/var/lib/app/blob $T/blob" | as client2 tiffin-client2 >/dev/null
cmp "$T/blob" "$F/hosts/client2/files/var/lib/app/blob"
echo "client2's new release is published and readable"
printf -- '-rm /reports/many-%s\n' $(seq 70) | as client1 tiffin-client1 >/dev/null 2>&1 || true

step "second run: nothing to do"
provision
[[ $(cat "$T/provision.out") == *"nothing to do"* ]] || fail "second run changed something"

step "an invalid sshd_extra line is refused by sshd -t and the previous drop-in stays"
before=$(sha256sum /etc/ssh/sshd_config.d/tiffin.conf)
sed -i 's/^sshd_extra = .*/sshd_extra = ["ClientAliveInterval 30", "NoSuchOption yes"]/' "$F/fleet.toml"
if provision; then fail "an invalid drop-in was accepted"; else rc=$?; fi
cp "$T/provision.err" "$T/err"
[ "$rc" = 1 ] || fail "exit code $rc, expected 1"
grep -q "NoSuchOption" "$T/err" || fail "sshd's message is not shown"
[ "$before" = "$(sha256sum /etc/ssh/sshd_config.d/tiffin.conf)" ] || fail "the drop-in changed"
ls -A /etc/ssh/sshd_config.d/
echo "get /CURRENT $T/got2" | as client1 tiffin-client1 >/dev/null
sed -i 's/^sshd_extra = .*/sshd_extra = ["ClientAliveInterval 30"]/' "$F/fleet.toml"

step "--prune: client2 leaves the fleet"
rm -r "$F/hosts/client2"
provision --prune
grep '^tiffin-client2:!' /etc/shadow || fail "tiffin-client2 is not locked"
[ ! -e /etc/tiffin/authorized_keys/tiffin-client2 ] || fail "key still there"
ls "$C/.pruned"
if findmnt "$C/client2/reports" >/dev/null || findmnt -rn -o TARGET | grep -q "^$C/.pruned/"; then
    fail "client2's reports tmpfs is still mounted"
fi
denied client2 tiffin-client2 "ls /"
provision --prune
[[ $(cat "$T/provision.out") == *"nothing to do"* ]] || fail "prune is not idempotent"
echo "get /CURRENT $T/got3" | as client1 tiffin-client1 >/dev/null

step "sshd stopped: provision still applies, says sshd is not running, and succeeds"
kill "$SSHD"
wait "$SSHD" || true
sed -i 's/^sshd_extra = .*/sshd_extra = ["ClientAliveInterval 31"]/' "$F/fleet.toml"
out=$("$TIFFIN" provision)
echo "$out" | tail -2
[[ $out == *"sshd is not running"* ]] || fail "no word about sshd not running"
grep -q "ClientAliveInterval 31" /etc/ssh/sshd_config.d/tiffin.conf || fail "drop-in not updated"

step "all good"
