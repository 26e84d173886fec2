# sshd Match blocks for tiffin's accounts, line for line what `tiffin
# provision` writes into its drop-in (src/server/provision/dropin.rs). Builtins only:
# the static checks compare its output with provision's snapshot.
#
# hosts: list of { account, chroot, keysFile }; extra: lines added to each block.
{
  hosts,
  extra ? [],
}: let
  trim = s: let
    m = builtins.match "[[:space:]]*(.*[^[:space:]])[[:space:]]*" s;
  in
    if m == null
    then ""
    else builtins.head m;
  # Explicit per-account blocks: an explicit name cannot match an unrelated
  # account that shares the prefix, and each chroot path is literal.
  fixed = [
    "ForceCommand internal-sftp -d / -P setstat,fsetstat,lsetstat"
    "AuthenticationMethods publickey"
    "PubkeyAuthentication yes"
    "PasswordAuthentication no"
    "KbdInteractiveAuthentication no"
    "DisableForwarding yes"
    "AllowTcpForwarding no"
    "AllowAgentForwarding no"
    "AllowStreamLocalForwarding no"
    "X11Forwarding no"
    "PermitTunnel no"
    "PermitTTY no"
    "PermitUserRC no"
  ];
  # sshd's keepalive for every session unless `extra` sets the keyword itself
  # (sshd takes the first value it reads): a dead watcher's session ends after
  # about 75 s without an answer (150 s before OpenSSH 9.5).
  clientAlive = [
    {
      key = "ClientAliveInterval";
      value = "15";
    }
    {
      key = "ClientAliveCountMax";
      value = "4";
    }
  ];
  upper = ["A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z"];
  lower = ["a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z"];
  # A line's keyword, lowercased: keywords are case-insensitive and may end in `=`.
  keyword = line: let
    m = builtins.match "[[:space:]]*([^[:space:]=]*).*" line;
  in
    builtins.replaceStrings upper lower (
      if m == null
      then ""
      else builtins.head m
    );
  extraKeywords = map keyword extra;
  keepalive =
    map (c: "${c.key} ${c.value}")
    (builtins.filter (c: !(builtins.elem (keyword c.key) extraKeywords)) clientAlive);
  block = h:
    "\nMatch User ${h.account}\n"
    + builtins.concatStringsSep "" (map (line: "    ${line}\n") ([
        "ChrootDirectory ${h.chroot}"
        "AuthorizedKeysFile ${h.keysFile}"
      ]
      ++ fixed
      ++ keepalive
      ++ map trim extra));
in
  builtins.concatStringsSep "" (map block hosts)
