# expect_denied in the VMs: the attempts of the lab's src/lab/access.rs, with
# OpenSSH's own ssh and sftp from the client, judged the same way. Run on the
# client as root by the generated testScript:
#   bash denied.sh ACCESS ACCOUNT SERVER CHROOT_ROOT OTHER OTHER_ACCOUNT OWN_ID OTHER_ID
# (OTHER, OTHER_ACCOUNT, OWN_ID, OTHER_ID may be empty). Exit 0 when every
# attempt was denied; otherwise it says which access worked.
set -u
access=$1 account=$2 server=$3 chroot_root=$4 other=$5 other_account=$6 own_id=$7 other_id=$8

identity=/etc/tiffin/id_ed25519
probe=/tmp/tiffin-lab-probe
stranger=/tmp/tiffin-lab-stranger
got=/tmp/tiffin-lab-got
target="$account@$server"
opts=(-F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o "IdentityFile=$identity"
  -o UserKnownHostsFile=/etc/ssh/ssh_known_hosts -o StrictHostKeyChecking=yes
  -o ConnectTimeout=10 -o LogLevel=ERROR)
echo "written by tiffin's VM test expect_denied" >"$probe"

problems=0
# attempt WHAT fails|lacks EXPECTED... -- COMMAND... ; stdin is the sftp batch, if any.
attempt() {
  local what=$1 mode=$2
  shift 2
  local expected=()
  while [[ $1 != -- ]]; do expected+=("$1"); shift; done
  shift
  local out code
  out=$(timeout 20 "$@" 2>&1)
  code=$?
  local denied=no
  if [[ $code == 124 ]]; then
    denied=no # still running after 20s: the access worked
  elif [[ $mode == fails ]]; then
    if [[ $code != 0 ]]; then
      for m in "${expected[@]}"; do [[ $out == *"$m"* ]] && denied=yes; done
    fi
  else
    denied=yes
    for m in "${expected[@]}"; do [[ -n $m && $out == *"$m"* ]] && denied=no; done
  fi
  if [[ $denied == yes ]]; then
    echo "denied: $what"
  else
    echo "NOT DENIED ($access): $account could $what (exit $code, expected $mode ${expected[*]}): $out"
    problems=$((problems + 1))
  fi
}
sftp_try() { # WHAT MODE EXPECTED... -- BATCH
  local what=$1 mode=$2
  shift 2
  local expected=()
  while [[ $1 != -- ]]; do expected+=("$1"); shift; done
  attempt "$what" "$mode" "${expected[@]}" -- bash -c 'printf "%s\n" "$1" | sftp -b - "${@:2}"' _ "$2" "${opts[@]}" "$target"
}

# The control: the same key logs in, lists its chroot and writes its reports;
# a denial is evidence only when the allowed access works.
if ! out=$(printf 'ls /\nput %s /reports/tiffin-lab-probe\nrm /reports/tiffin-lab-probe\n' "$probe" |
  timeout 20 sftp -b - "${opts[@]}" "$target" 2>&1); then
  echo "the control failed: $account could not list its own chroot and write into reports/, so a denial would prove nothing: $out"
  exit 1
fi

not_there=("not found" "No such file" "Permission denied")
refused_write=("Permission denied" "Failure")
case $access in
read-other)
  sftp_try "read $other's CURRENT through /.." fails "${not_there[@]}" -- "get /../$other/CURRENT $got"
  sftp_try "read $other's CURRENT through .." fails "${not_there[@]}" -- "get ../$other/CURRENT $got"
  sftp_try "read $other's CURRENT by its path on the server" fails "${not_there[@]}" -- "get $chroot_root/$other/CURRENT $got"
  if [[ -n $other_id ]]; then
    sftp_try "read $other's MANIFEST by its release id" fails "${not_there[@]}" -- "get /releases/$other_id/MANIFEST $got"
  fi
  ;;
list-other)
  sftp_try "list $other's chroot through /.." fails "${not_there[@]}" -- "ls /../$other"
  sftp_try "list the server's chroot root" fails "${not_there[@]}" -- "ls $chroot_root"
  sftp_try "look for $other above its own root" lacks "$other" -- "ls -la /.."
  ;;
write-release)
  if [[ -z $own_id ]]; then
    echo "write-release needs a published release of $account (add a publish step before it)"
    exit 1
  fi
  r=/releases/$own_id
  sftp_try "add a file to its release" fails "${refused_write[@]}" -- "put $probe $r/evil"
  sftp_try "overwrite its MANIFEST" fails "${refused_write[@]}" -- "put $probe $r/MANIFEST"
  sftp_try "delete its MANIFEST" fails "${refused_write[@]}" -- "rm $r/MANIFEST"
  sftp_try "rename its MANIFEST" fails "${refused_write[@]}" -- "rename $r/MANIFEST $r/M"
  sftp_try "chmod its MANIFEST" fails "${refused_write[@]}" -- "chmod 666 $r/MANIFEST"
  sftp_try "create a directory in its release" fails "${refused_write[@]}" -- "mkdir $r/evil"
  sftp_try "create a release" fails "${refused_write[@]}" -- "mkdir /releases/evil"
  sftp_try "add a file to releases/" fails "${refused_write[@]}" -- "put $probe /releases/evil"
  ;;
write-root)
  sftp_try "create a file at its root" fails "${refused_write[@]}" -- "put $probe /evil"
  sftp_try "create a directory at its root" fails "${refused_write[@]}" -- "mkdir /evil"
  sftp_try "replace CURRENT" fails "${refused_write[@]}" -- "put $probe /CURRENT"
  sftp_try "rename reports/" fails "${refused_write[@]}" -- "rename /reports /evil"
  sftp_try "create a symlink at its root" fails "${refused_write[@]}" -- "symlink /reports /evil"
  sftp_try "escape reports/ with .." fails "${refused_write[@]}" -- "put $probe /reports/../evil"
  if [[ -n $own_id ]]; then
    sftp_try "delete CURRENT" fails "${refused_write[@]}" -- "rm /CURRENT"
  fi
  ;;
shell)
  # Expanded by a shell on the server only: the mark appears only if one ran it.
  attempt "run a command" lacks "TIFFIN-LAB-SHELL-42" -- ssh "${opts[@]}" "$target" 'echo TIFFIN-LAB-SHELL-$((6*7))'
  attempt "run a command with a terminal" lacks "TIFFIN-LAB-SHELL-42" -- ssh "${opts[@]}" -tt "$target" 'echo TIFFIN-LAB-SHELL-$((6*7))'
  ;;
port-forward)
  attempt "forward its stdio to a TCP port (-W)" lacks "SSH-2.0" -- ssh "${opts[@]}" -W "$server:22" "$target"
  attempt "open a remote port forward (-R)" fails "forwarding failed" "prohibited" "open failed" -- \
    ssh "${opts[@]}" -N -o ExitOnForwardFailure=yes -R 127.0.0.1:10022:127.0.0.1:22 "$target"
  ;;
wrong-key)
  attempt "log in as $other_account with its own key" fails "Permission denied" -- ssh "${opts[@]}" "$other_account@$server" true
  rm -f "$stranger" "$stranger.pub"
  ssh-keygen -q -t ed25519 -N "" -f "$stranger"
  stranger_opts=("${opts[@]/#IdentityFile=$identity/IdentityFile=$stranger}")
  attempt "log in as $account with a key the fleet does not know" fails "Permission denied" -- ssh "${stranger_opts[@]}" "$target" true
  ;;
*)
  echo "unknown access $access"
  exit 2
  ;;
esac </dev/null

if [[ $problems != 0 ]]; then
  echo "$problems access(es) of $access were not denied"
  exit 1
fi
echo "every attempt of $access was denied"
