# sshd Match blocks for tiffin's accounts, line for line what `tiffin
# provision` writes into its drop-in (src/provision/dropin.rs). Builtins only:
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
    "ForceCommand internal-sftp -d /"
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
  block = h:
    "\nMatch User ${h.account}\n"
    + builtins.concatStringsSep "" (map (line: "    ${line}\n") ([
        "ChrootDirectory ${h.chroot}"
        "AuthorizedKeysFile ${h.keysFile}"
      ]
      ++ fixed
      ++ map trim extra));
in
  builtins.concatStringsSep "" (map block hosts)
