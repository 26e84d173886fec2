# services.tiffin.server.metrics: the fleet's state as Prometheus metrics. A
# timer runs `tiffin status --format prometheus` and writes the result
# atomically into node_exporter's textfile collector directory, so every host
# is exported from the server, including the ones that stopped reporting.
{
  config,
  lib,
  ...
}: let
  server = config.services.tiffin.server;
  cfg = server.metrics;
  output = "${cfg.textfileDirectory}/tiffin.prom";
in {
  options.services.tiffin.server.metrics = {
    enable = lib.mkEnableOption "exporting the fleet's state to Prometheus through node_exporter's textfile collector";

    fleet = lib.mkOption {
      type = lib.types.strMatching "/.+";
      example = "/srv/fleet";
      description = ''
        The fleet repository `tiffin status` reads (the one `tiffin publish`
        runs in): its hosts, their poll intervals and `server.chroot_root`.
      '';
    };

    interval = lib.mkOption {
      type = lib.types.strMatching "[0-9]+ ?(s|sec|m|min|h)";
      default = "1min";
      example = "30s";
      description = ''
        How often the metrics file is rewritten (a systemd time span). Each
        run reads every host's report and CURRENT; it connects to nothing.
      '';
    };

    textfileDirectory = lib.mkOption {
      type = lib.types.strMatching "/.+[^/]";
      default = "/var/lib/prometheus-node-exporter-text-files";
      description = ''
        node_exporter's textfile collector directory; tiffin writes
        `tiffin.prom` there (a temporary name, then a rename, so node_exporter
        never reads half a file).
      '';
    };

    configureNodeExporter = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = ''
        Enable {option}`services.prometheus.exporters.node` with its textfile
        collector reading {option}`textfileDirectory`. Turn it off when
        node_exporter is configured elsewhere, and give that one
        `--collector.textfile.directory=<textfileDirectory>`.
      '';
    };
  };

  config = lib.mkIf (server.enable && cfg.enable) {
    systemd.tmpfiles.settings."10-tiffin-metrics".${cfg.textfileDirectory}.d = {
      mode = "0755";
      user = "root";
      group = "root";
    };

    systemd.services.tiffin-metrics = {
      description = "tiffin: the fleet's state as Prometheus metrics";
      # Before the fleet repository exists (a new server) there is nothing to export;
      # the metrics then stop being written, which tiffin_status_timestamp_seconds shows.
      unitConfig.ConditionPathExists = "${cfg.fleet}/fleet.toml";
      serviceConfig = {
        Type = "oneshot";
        ExecStart = "${lib.getExe server.package} status --fleet ${cfg.fleet} --format prometheus --output ${output}";
        # status exits 3 when a host needs attention; the metrics say which.
        SuccessExitStatus = "3";
        # It only reads the chroots and writes the one file.
        ProtectSystem = "strict";
        ReadWritePaths = [cfg.textfileDirectory];
        PrivateTmp = true;
        NoNewPrivileges = true;
      };
    };

    systemd.timers.tiffin-metrics = {
      wantedBy = ["timers.target"];
      timerConfig = {
        OnBootSec = cfg.interval;
        OnUnitActiveSec = cfg.interval;
      };
    };

    services.prometheus.exporters.node = lib.mkIf cfg.configureNodeExporter {
      enable = true;
      enabledCollectors = ["textfile"];
      extraFlags = ["--collector.textfile.directory=${cfg.textfileDirectory}"];
    };
  };
}
