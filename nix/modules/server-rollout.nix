# services.tiffin.server.rollout: the rollout controller on a timer. There is
# no daemon: every `interval` the timer runs `tiffin rollout step`, which reads
# the hosts' reports, starts the next wave, halts, reverts or finishes the
# rollout a publish began (fleet.toml `[rollout]`), and grants reboot slots
# (`[groups.<name>] max_rebooting`). It takes the publish lock, so it never
# interleaves with a publish; it connects to nothing and holds no admin key.
{
  config,
  lib,
  ...
}: let
  server = config.services.tiffin.server;
  cfg = server.rollout;
in {
  options.services.tiffin.server.rollout = {
    enable = lib.mkEnableOption "the rollout controller: a timer that runs `tiffin rollout step` (waves, halts, reboot slots)";

    fleet = lib.mkOption {
      type = lib.types.strMatching "/.+";
      example = "/srv/fleet";
      description = ''
        The fleet repository `tiffin publish` runs in: its `fleet.toml`
        (`[rollout]`, `[groups]`, `server.chroot_root`, `server.state_dir`)
        and its hosts' tags.
      '';
    };

    interval = lib.mkOption {
      type = lib.types.strMatching "[0-9]+ ?(s|sec|m|min|h)";
      default = "1min";
      example = "30s";
      description = ''
        How often `tiffin rollout step` runs (a systemd time span). A wave
        goes out at most this long after the last one became healthy; each
        step reads every host's report and CURRENT, nothing more.
      '';
    };

    stateDir = lib.mkOption {
      type = lib.types.strMatching "/.+";
      default = "/var/lib/tiffin";
      description = ''
        `server.state_dir` of `fleet.toml`, where the rollout's record
        (`rollout.toml`), the reboot slots and each host's last seq live: the
        step may write there and under {option}`services.tiffin.server.chrootRoot`
        only.
      '';
    };
  };

  config = lib.mkIf (server.enable && cfg.enable) {
    systemd.services.tiffin-rollout = {
      description = "tiffin: advance the rollout, grant reboot slots";
      # A new server has no fleet repository yet: nothing to advance.
      unitConfig.ConditionPathExists = "${cfg.fleet}/fleet.toml";
      serviceConfig = {
        Type = "oneshot";
        ExecStart = "${lib.getExe server.package} rollout step --fleet ${cfg.fleet}";
        # It writes CURRENT (and a revert's release) into the chroots, and its records.
        ProtectSystem = "strict";
        ReadWritePaths = lib.unique [server.chrootRoot cfg.stateDir];
        PrivateTmp = true;
        NoNewPrivileges = true;
      };
    };

    systemd.timers.tiffin-rollout = {
      wantedBy = ["timers.target"];
      timerConfig = {
        OnBootSec = cfg.interval;
        OnUnitActiveSec = cfg.interval;
      };
    };
  };
}
