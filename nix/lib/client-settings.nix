# The client settings (the document `tiffin pull --config` reads, see
# docs/formats.md "Client") from the values of the NixOS client module's
# options. Builtins only, so it evaluates without nixpkgs: the static checks
# run it with `nix-instantiate --eval --strict --json` and feed the result to
# `tiffin pull --validate --config FILE.json`.
#
# Input: { host, server, port, user, identityFile, serverPublicKey,
#   confirmTimeout, trust, settings } (user may be null: the binary then uses
#   "<user_prefix><host>"; confirmTimeout may be null: the binary's default;
#   trust may be null, an unsigned host, or { version, threshold, keys }: the
#   `[trust]` table, the fleet's root of trust this host is pinned to).
# Output: an attribute set; null values are left out.
{
  host,
  server,
  port ? 22,
  user ? null,
  identityFile,
  serverPublicKey,
  confirmTimeout ? null,
  trust ? null,
  settings ? {},
}: let
  # Keys the dedicated options own; setting them in `settings` as well would
  # leave two sources of truth, so it is refused.
  owned = ["host" "server" "user" "identity" "server_key" "confirm_timeout" "trust"];
  clashes = builtins.filter (k: builtins.hasAttr k settings) owned;

  # host[:port]; an IPv6 literal needs brackets before the port.
  isIPv6 = builtins.match ".*:.*" server != null && builtins.match "[[].*[]]" server == null;
  serverHost =
    if isIPv6
    then "[${server}]"
    else server;

  dedicated = {
    inherit host;
    server = "${serverHost}:${toString port}";
    identity = identityFile;
    server_key = serverPublicKey;
    user = user;
    confirm_timeout = confirmTimeout;
    # Only the pin: fleet.toml's expiry and warn_before are the admins'.
    trust =
      if trust == null
      then null
      else {inherit (trust) version threshold keys;};
  };

  # The key types tiffin accepts for an admin (docs/signing.md).
  adminKeyTypes = ["ssh-ed25519" "sk-ssh-ed25519@openssh.com"];
  badAdminKeys =
    if trust == null
    then []
    else builtins.filter (k: builtins.match "(ssh-ed25519|sk-ssh-ed25519@openssh[.]com) [A-Za-z0-9+/=]+( .*)?" k == null) trust.keys;

  nonNull = attrs:
    builtins.listToAttrs (builtins.concatMap (name:
      if attrs.${name} == null
      then []
      else [
        {
          inherit name;
          value = attrs.${name};
        }
      ]) (builtins.attrNames attrs));
in
  if clashes != []
  then
    throw ''
      services.tiffin.client.settings sets ${builtins.concatStringsSep ", " clashes}, which the dedicated options own
      (host, server/port, user, identityFile, serverPublicKey, confirm.timeout, trust): set those options instead.''
  else if builtins.match "[a-z][a-z0-9-]*" host == null
  then throw "services.tiffin.client.host: \"${host}\" is not a tiffin host name (a lowercase letter, then lowercase letters, digits or '-')"
  else if builtins.match "ssh-[a-z0-9-]+ [A-Za-z0-9+/=]+( .*)?|ecdsa-[a-z0-9-]+ [A-Za-z0-9+/=]+( .*)?" serverPublicKey == null
  then throw "services.tiffin.client.serverPublicKey: expected one OpenSSH public key line (\"ssh-ed25519 AAAA…\"), got \"${serverPublicKey}\""
  else if trust != null && trust.threshold > builtins.length trust.keys
  then throw "services.tiffin.client.trust: threshold ${toString trust.threshold} is more than its ${toString (builtins.length trust.keys)} key(s): no release could ever be signed enough"
  else if badAdminKeys != []
  then throw "services.tiffin.client.trust.keys: ${builtins.toJSON (builtins.head badAdminKeys)} is not an OpenSSH public key line of a type tiffin accepts (${builtins.concatStringsSep ", " adminKeyTypes})"
  else nonNull settings // nonNull dedicated
