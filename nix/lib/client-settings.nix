# The client settings (the document `tiffin pull --config` reads, see
# docs/formats.md "Client") from the values of the NixOS client module's
# options. Builtins only, so it evaluates without nixpkgs: the static checks
# run it with `nix-instantiate --eval --strict --json` and feed the result to
# `tiffin pull --validate --config FILE.json`.
#
# Input: { host, server, port, user, identityFile, serverPublicKey,
#   confirmTimeout, settings } (user may be null: the binary then uses
#   "<user_prefix><host>"; confirmTimeout may be null: the binary's default).
# Output: an attribute set; null values are left out.
{
  host,
  server,
  port ? 22,
  user ? null,
  identityFile,
  serverPublicKey,
  confirmTimeout ? null,
  settings ? {},
}: let
  # Keys the dedicated options own; setting them in `settings` as well would
  # leave two sources of truth, so it is refused.
  owned = ["host" "server" "user" "identity" "server_key" "confirm_timeout"];
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
  };

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
      (host, server/port, user, identityFile, serverPublicKey, confirm.timeout): set those options instead.''
  else if builtins.match "[a-z][a-z0-9-]*" host == null
  then throw "services.tiffin.client.host: \"${host}\" is not a tiffin host name (a lowercase letter, then lowercase letters, digits or '-')"
  else if builtins.match "ssh-[a-z0-9-]+ [A-Za-z0-9+/=]+( .*)?|ecdsa-[a-z0-9-]+ [A-Za-z0-9+/=]+( .*)?" serverPublicKey == null
  then throw "services.tiffin.client.serverPublicKey: expected one OpenSSH public key line (\"ssh-ed25519 AAAA…\"), got \"${serverPublicKey}\""
  else nonNull settings // nonNull dedicated
