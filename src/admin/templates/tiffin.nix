# The tiffin client on every host of the fleet (templates/flake.nix adds this
# module and tiffin's nixosModules.client to each host's system): where the
# server is, its pinned SSH host key and how often to poll, all read from the
# fleet's fleet.toml. common/fleet.toml is a link to ../fleet.toml, so this
# works both in the fleet repository and in a published release, where
# `tiffin publish` copies what the link points to.
#
# A fleet with a [trust] section in fleet.toml signs its releases (tiffin's
# docs/signing.md): every host is pinned to that root of trust (its version,
# threshold and admin keys) and from then on applies only what the admins
# signed for it.
#
# A host changes any of it in its own configuration.nix, e.g.
#   services.tiffin.client.interval = "hourly";
# (needed when its host.toml sets its own poll_interval), or leaves tiffin
# with services.tiffin.client.enable = false (and `[apply] allow_leaving =
# true` in its host.toml, or the client refuses that release).
{
  config,
  lib,
  ...
}: let
  fleet = builtins.fromTOML (builtins.readFile ./fleet.toml);
  server = fleet.server or {};
  pollInterval = (fleet.defaults or {}).poll_interval or "15m";
  # Evaluation stops with the message (lib.assertMsg), failing the rebuild.
  fail = msg: assert lib.assertMsg false msg; null;
  missing = key:
    fail "common/tiffin.nix: fleet.toml has no [server] ${key}; set it (see the comments in fleet.toml), then publish again";
  # The pin: version, threshold and keys only (expiry and warn_before are for
  # `tiffin sign` and `tiffin status`, on the admins' side).
  trust = fleet.trust or null;
  missingTrust = key:
    fail "common/tiffin.nix: fleet.toml's [trust] has no ${key}; set it (tiffin's docs/signing.md), then publish again";

  # poll_interval ("15m", "1h", "90s", "1h 30m") as a systemd calendar
  # expression that fires evenly: a divisor of a minute, an hour or a day.
  units = {
    s = 1;
    sec = 1;
    secs = 1;
    second = 1;
    seconds = 1;
    m = 60;
    min = 60;
    mins = 60;
    minute = 60;
    minutes = 60;
    h = 3600;
    hr = 3600;
    hrs = 3600;
    hour = 3600;
    hours = 3600;
    d = 86400;
    day = 86400;
    days = 86400;
  };
  parts = builtins.split "([0-9]+)[[:space:]]*([a-z]+)" pollInterval;
  terms = builtins.filter builtins.isList parts;
  rest = lib.concatStrings (builtins.filter builtins.isString parts);
  badInterval = why:
    fail "common/tiffin.nix: poll_interval ${builtins.toJSON pollInterval} in fleet.toml ${why}; set services.tiffin.client.interval (a systemd calendar expression) in each configuration.nix instead";
  seconds =
    if terms == [] || builtins.match "[[:space:]]*" rest == null
    then badInterval "is not a duration like \"15m\", \"1h\" or \"90s\""
    else
      lib.foldl' (acc: t: let
        unit = builtins.elemAt t 1;
      in
        acc
        + lib.toInt (builtins.elemAt t 0)
        * (units.${unit} or (badInterval "has the unit ${builtins.toJSON unit}, which is not s, m, h or d")))
      0
      terms;
  divides = n: total: n > 0 && total - (total / n) * n == 0;
  calendar =
    if seconds < 60 && divides seconds 60
    then "*:*:0/${toString seconds}"
    else if seconds < 3600 && divides 60 seconds && divides (seconds / 60) 60
    then "*:0/${toString (seconds / 60)}"
    else if seconds < 86400 && divides 3600 seconds && divides (seconds / 3600) 24
    then "0/${toString (seconds / 3600)}:00"
    else if seconds == 86400
    then "daily"
    else badInterval "does not divide a minute, an hour or a day evenly, so no calendar expression polls at that interval";
in {
  services.tiffin.client = {
    enable = lib.mkDefault true;
    # host: config.networking.hostName, the module's default.
    server = lib.mkDefault (server.address or (missing "address"));
    port = lib.mkDefault (server.port or 22);
    serverPublicKey = lib.mkDefault (server.host_key or (missing "host_key"));
    interval = lib.mkDefault calendar;
    # tiffin pull --watch sends its heartbeat report once per poll interval.
    settings.poll_interval = lib.mkDefault pollInterval;
    # The account is <user_prefix><host>; tiffin's own default prefix is "tiffin-".
    user = lib.mkIf (server ? user_prefix) (lib.mkDefault "${server.user_prefix}${config.services.tiffin.client.host}");
    # Signed releases: without [trust], releases are trusted as served.
    trust = lib.mkIf (trust != null) (lib.mkDefault {
      version = trust.version or (missingTrust "version");
      threshold = trust.threshold or (missingTrust "threshold");
      keys = trust.keys or (missingTrust "keys");
    });
  };
}
