#!/bin/bash
# End-to-end proof of `tiffin pull` against the real OpenSSH, run by tests/cli/pull.rs as
#   unshare --mount --net --pid --fork --mount-proc --propagation private bash pull_e2e.sh TIFFIN DIR [POLLS]
# The server (sshd provisioned by `tiffin provision`) and the client share one private network
# namespace (192.0.2.1 on its loopback); /etc, /var and /run are overlays or tmpfs of a private
# mount namespace, so the machine's accounts and sshd never change. The PID namespace takes sshd
# down with the script, whatever happens.
# It also measures: a no-change poll against OpenSSH's sftp doing `ls -l` of one file (wall time,
# median of POLLS runs, and bytes on the loopback), the bytes of a 1-file delta of a 500-file
# ~2 MB tree against the full tree, the client's peak RSS during the full pull, and its peak RSS
# pulling one 200 MB file (streamed, so bounded: asserted under 32 MiB).
set -euo pipefail
TIFFIN=$1
T=$2
POLLS=${3:-20}
. "$(dirname "$0")/e2e-namespace.sh"
rm -f /etc/ssh/ssh_host_*
ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key

step "fleet: client1 with files of modes 0600/0644/0755 and a 500-file configuration"
F="$T/fleet"
"$TIFFIN" init "$F" >/dev/null
rm -r "$F/hosts/example"
ssh-keygen -q -t ed25519 -N '' -C client1 -f "$T/client1"
"$TIFFIN" host add client1 --key "$T/client1.pub" --fleet "$F" >/dev/null
H="$F/hosts/client1"
mkdir -p "$H/files/etc/app" "$H/files/usr/local/bin" "$H/modules"
echo s3cret >"$H/files/etc/app/secret" && chmod 600 "$H/files/etc/app/secret"
echo "a = 1" >"$H/files/etc/app/conf" && chmod 644 "$H/files/etc/app/conf"
printf '#!/bin/sh\necho hi\n' >"$H/files/usr/local/bin/tool" && chmod 755 "$H/files/usr/local/bin/tool"
for i in $(seq 1 495); do
    head -c 3000 /dev/urandom | base64 -w 76 >"$H/modules/m$i.nix"
done
cd "$F"
"$TIFFIN" publish
C=/var/lib/tiffin/chroots

step "sshd, provisioned by tiffin provision"
start_sshd
provision >/dev/null

step "client configuration"
R="$T/client-root"
S="$T/client-state"
mkdir -p "$R"
# The stand-in rebuild: records its arguments and fails when the configuration says so.
cat >"$T/rebuild" <<'EOF'
#!/bin/sh
# `build` (the client's check that a release keeps tiffin): a system with tiffin's units.
if [ "$1" = build ]; then
  u=result/etc/systemd/system
  mkdir -p $u/timers.target.wants && touch $u/tiffin-pull.service $u/tiffin-pull.timer $u/timers.target.wants/tiffin-pull.timer
  exit 0
fi
echo "$*" >>"$REBUILD_CALLS"
config=${3%#*}
echo "building $config for ${3#*#}"
if [ -e "$config/broken" ]; then echo "error: the configuration is broken" >&2; exit 1; fi
EOF
chmod 755 "$T/rebuild"
export REBUILD_CALLS="$T/calls"
cat >"$T/client.toml" <<EOF
host = "client1"
server = "192.0.2.1"
identity = "$T/client1"
server_key = "$(cat /etc/ssh/ssh_host_ed25519_key.pub)"
state_dir = "$S"
root = "$R"
rebuild = ["$T/rebuild", "{action}", "--flake", "{config}#{host}"]
connect_timeout = "5s"
io_timeout = "10s"
backoff_initial = "1m"
EOF
"$TIFFIN" pull --config "$T/client.toml" --validate
pull() { "$TIFFIN" pull --config "$T/client.toml" "$@"; }
# Every packet crosses lo once, so its tx counter is client rx + tx (frames included).
# /proc/net/dev, not /sys: this /proc belongs to the namespace, /sys to the machine.
lo_bytes() { awk '{gsub(":", " ")} $1 == "lo" {print $10}' /proc/net/dev; }

step "first pull: everything downloaded, files land with their modes, rebuild on the right flake"
b0=$(lo_bytes)
/usr/bin/time -v -o "$T/time.full" "$TIFFIN" pull --config "$T/client.toml" | tee "$T/out"
full_bytes=$(( $(lo_bytes) - b0 ))
peak_rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$T/time.full")
grep -q "downloaded 504 file(s)" "$T/out" || fail "expected 504 downloads"
[ "$(stat -c '%a %U' "$R/etc/app/secret")" = "600 root" ] || fail "secret: $(stat -c '%a %U' "$R/etc/app/secret")"
[ "$(stat -c '%a' "$R/etc/app/conf")" = 644 ] || fail conf
[ "$(stat -c '%a' "$R/usr/local/bin/tool")" = 755 ] || fail tool
echo s3cret | cmp - "$R/etc/app/secret"
[ "$(stat -c '%a' "$S")" = 700 ] || fail "state_dir is not 0700"
grep -qx "switch --flake $S/current/config#client1" "$T/calls" || fail "rebuild call: $(cat "$T/calls")"
[ ! -e "$S/current/config/files" ] || fail "files/ inside the flake directory"
if grep -rq s3cret "$S/current/config"; then fail "a secret is inside the flake directory"; fi
"$TIFFIN" status | tee "$T/out"
grep -q "up-to-date" "$T/out" || fail "status is not up-to-date"
[ -s "$C/client1/reports/rebuild.log" ] || fail "no rebuild.log uploaded"
grep -q "building $S/current/config" "$C/client1/reports/rebuild.log"

step "no-change poll: CURRENT read, report uploaded, nothing else"
ID=$(cat "$C/client1/CURRENT")
RUST_LOG=tiffin=debug pull 2>"$T/err" | tee "$T/out"
grep -q "unchanged" "$T/out" || fail "not unchanged"
# Counted on the SFTP stream itself (src/client/wire.rs): complete packets the client wrote.
grep "sftp requests" "$T/err"
grep -q "sftp requests: 8," "$T/err" || fail "expected 8 sftp requests (init, open/read/close, open/write/close, posix-rename)"
[ "$(wc -l <"$T/calls")" = 1 ] || fail "rebuilt on an unchanged poll"

step "measure: $POLLS no-change polls, tiffin vs OpenSSH sftp doing ls -l /CURRENT"
SO=(-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -i "$T/client1")
echo "ls -l /CURRENT" >"$T/batch"
sftp "${SO[@]}" -b "$T/batch" tiffin-client1@192.0.2.1 >/dev/null || fail "sftp poll failed"
measure() { # measure NAME CMD...: prints median ms and mean bytes per run
    local name=$1; shift
    local b0 b1 t0 t1
    : >"$T/times.$name"
    b0=$(lo_bytes)
    for _ in $(seq "$POLLS"); do
        t0=$(date +%s%N)
        "$@" >/dev/null 2>&1 || fail "$name poll failed"
        t1=$(date +%s%N)
        echo $(( (t1 - t0) / 1000 )) >>"$T/times.$name"
    done
    b1=$(lo_bytes)
    local median
    median=$(sort -n "$T/times.$name" | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
    echo "$median $(( (b1 - b0) / POLLS ))"
}
read -r tiffin_us tiffin_bytes < <(measure tiffin pull)
read -r sftp_us sftp_bytes < <(measure sftp sftp "${SO[@]}" -b "$T/batch" tiffin-client1@192.0.2.1)

step "delta: one changed file of the 500-file tree"
head -c 3000 /dev/urandom | base64 -w 76 >"$H/modules/m7.nix"
"$TIFFIN" publish >/dev/null
b0=$(lo_bytes)
pull | tee "$T/out"
delta_bytes=$(( $(lo_bytes) - b0 ))
grep -q "downloaded 1 file(s)" "$T/out" || fail "the delta downloaded more than the changed file"
grep -q "reused 503 local file(s)" "$T/out" || fail "local files not reused"
cmp "$H/modules/m7.nix" "$S/current/config/modules/m7.nix"

step "a broken configuration fails, keeps the previous release, and backs off"
PREV=$(readlink "$S/current")
touch "$H/broken"
"$TIFFIN" publish >/dev/null
if pull >"$T/out" 2>"$T/err"; then fail "a broken release succeeded"; fi
cat "$T/err"
grep -q "the rebuild failed" "$T/err"
[ "$(readlink "$S/current")" = "$PREV" ] || fail "current moved to the failed release"
"$TIFFIN" status >"$T/out" || true
grep -q failed "$T/out" || fail "status does not show failed: $(cat "$T/out")"
grep -q "the configuration is broken" "$C/client1/reports/rebuild.log" || fail "log tail not uploaded"
calls=$(wc -l <"$T/calls")
if pull 2>"$T/err"; then fail "backoff poll succeeded"; fi
grep -q "next retry at" "$T/err" || fail "no backoff: $(cat "$T/err")"
[ "$(wc -l <"$T/calls")" = "$calls" ] || fail "retried within the backoff"
rm "$H/broken"
"$TIFFIN" publish >/dev/null
pull | grep -q "applied" || fail "the fix did not converge"
"$TIFFIN" status | grep -q up-to-date || fail "not up-to-date after the fix"

step "a concurrent pull exits at once"
flock "$S/lock" sleep 3 &
holder=$!
sleep 0.3
t0=$(date +%s%N)
if pull 2>"$T/err"; then fail "a concurrent pull ran"; fi
t1=$(date +%s%N)
cat "$T/err"
grep -q "another tiffin pull is running" "$T/err"
[ $(( (t1 - t0) / 1000000 )) -lt 2000 ] || fail "the concurrent pull waited"
wait "$holder"

step "a 200 MB file streams to disk in bounded memory (docs/client.md: under 32 MiB RSS)"
mkdir -p "$H/files/var/lib"
head -c 200M /dev/urandom >"$H/files/var/lib/big.bin"
"$TIFFIN" publish >/dev/null
/usr/bin/time -v -o "$T/time.big" "$TIFFIN" pull --config "$T/client.toml" | tee "$T/out"
big_rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$T/time.big")
grep -q "downloaded 1 file(s), 209715200 bytes" "$T/out" || fail "the big file was not downloaded alone"
cmp "$H/files/var/lib/big.bin" "$R/var/lib/big.bin"
echo "peak RSS pulling one 200 MB file: $big_rss KiB"
[ "$big_rss" -lt $((32 * 1024)) ] || fail "peak RSS $big_rss KiB is not under 32 MiB"
# Free the tmpfs: four copies of the file (fleet, chroot, store, root) are not needed further.
rm "$H/files/var/lib/big.bin"
"$TIFFIN" publish >/dev/null
pull >/dev/null

step "mitm: another host key on the server address, the pull refuses before reading anything"
before=$(sha256sum "$S/state.toml" "$C/client1/reports/status.toml")
ssh-keygen -q -t ed25519 -N '' -f "$T/mitm_key"
kill "$SSHD"
wait "$SSHD" || true
/usr/sbin/sshd -D -e -f /etc/ssh/sshd_config -o ListenAddress=192.0.2.1:22 -o HostKey="$T/mitm_key" 2>"$T/sshd-mitm.log" &
for _ in $(seq 100); do (exec 3<>/dev/tcp/192.0.2.1/22) 2>/dev/null && break; sleep 0.1; done
if pull 2>"$T/err"; then fail "pull accepted another host key"; fi
cat "$T/err"
want=$(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | awk '{print $2}')
got=$(ssh-keygen -lf "$T/mitm_key.pub" | awk '{print $2}')
grep -q "$want" "$T/err" && grep -q "$got" "$T/err" || fail "the error does not show both fingerprints"
[ "$before" = "$(sha256sum "$S/state.toml" "$C/client1/reports/status.toml")" ] || fail "state or report changed"
if grep -q "Accepted publickey" "$T/sshd-mitm.log"; then fail "the client authenticated to the impostor"; fi

step "figures"
tiffin_ms=$(awk "BEGIN {printf \"%.1f\", $tiffin_us/1000}")
sftp_ms=$(awk "BEGIN {printf \"%.1f\", $sftp_us/1000}")
printf '%-34s %10s %10s\n' measure tiffin openssh-sftp
printf '%-34s %10s %10s\n' "no-change poll, median ms" "$tiffin_ms" "$sftp_ms"
printf '%-34s %10s %10s\n' "no-change poll, bytes (rx+tx)" "$tiffin_bytes" "$sftp_bytes"
printf '%-34s %10s\n' "full tree pull, bytes" "$full_bytes"
printf '%-34s %10s\n' "1-file delta pull, bytes" "$delta_bytes"
printf '%-34s %10s\n' "full pull peak RSS, KiB" "$peak_rss"
printf '%-34s %10s\n' "200 MB file pull peak RSS, KiB" "$big_rss"
echo "poll_ratio=$(awk "BEGIN {printf \"%.2f\", $tiffin_us/$sftp_us}") poll_bytes=$tiffin_bytes delta_fraction=$(awk "BEGIN {printf \"%.4f\", $delta_bytes/$full_bytes}") peak_rss_kib=$peak_rss big_file_rss_kib=$big_rss"

step "all good"
