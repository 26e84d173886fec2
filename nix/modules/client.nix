# services.tiffin.client: `tiffin pull` from a systemd timer, keeping this
# host's configuration up to date from its SFTP chroot on a tiffin server.
{
  config,
  lib,
  pkgs,
  ...
}: let
  cfg = config.services.tiffin.client;
  settingsFormat = pkgs.formats.toml {};

  # The option values become client.toml through the builtins-only helper the
  # static checks feed to `tiffin pull --validate`, so both agree on the keys.
  clientSettings = import ../lib/client-settings.nix {
    inherit (cfg) host server port user identityFile serverPublicKey;
    confirmTimeout = cfg.confirm.timeout;
    inherit (cfg) trust;
    settings =
      cfg.settings
      // lib.optionalAttrs (cfg.cachePublicKey != null) {cache_public_key = cfg.cachePublicKey;}
      // lib.optionalAttrs cfg.notify.enable {notify = "desktop";}
      // lib.optionalAttrs (cfg.defer.metered || cfg.defer.onBatteryBelow != null) {
        defer =
          lib.optionalAttrs cfg.defer.metered {metered = "defer";}
          // lib.optionalAttrs (cfg.defer.onBatteryBelow != null) {on_battery_below = cfg.defer.onBatteryBelow;};
      };
  };
  configFile = settingsFormat.generate "tiffin-client.toml" clientSettings;
  stateDir = cfg.settings.state_dir or "/var/lib/tiffin";

  # What nixos-rebuild needs, as in nixpkgs' system.autoUpgrade: shared by the
  # one-shot unit and the watcher, which run the same apply.
  pullEnvironment =
    config.nix.envVars
    // {HOME = "/root";}
    // config.networking.proxy.envVars;
  pullPath = [
    config.system.build.nixos-rebuild
    config.nix.package.out
    config.programs.ssh.package
    pkgs.coreutils
    pkgs.gitMinimal
    pkgs.gnutar
    pkgs.gzip
    pkgs.xz.bin
  ];
  # Run once, by tiffin-key.service, before either unit that logs in: the
  # timer's and the watcher's units start together on a first boot, and two
  # ssh-keygen runs on one missing file race (the loser fails on its overwrite
  # prompt).
  createKey = ''
    if [ ! -s ${lib.escapeShellArg cfg.identityFile} ]; then
      install -d -m 0700 "$(dirname ${lib.escapeShellArg cfg.identityFile})"
      ssh-keygen -q -t ed25519 -N "" -C ${lib.escapeShellArg "tiffin@${cfg.host}"} -f ${lib.escapeShellArg cfg.identityFile}
      echo "tiffin: created ${cfg.identityFile}; on the fleet, run: tiffin host add ${cfg.host} --key '$(cat ${lib.escapeShellArg "${cfg.identityFile}.pub"})'"
    fi
  '';

  triggerGroups = cfg.allowTrigger.groups;
  # The user's button: polkit lets these groups start (only start) the one-shot
  # unit, or the button's own (tiffin-update-now.service, the same pull with --now).
  polkitRule = ''
    // tiffin: members of ${lib.concatStringsSep ", " triggerGroups} may start tiffin-pull.service and tiffin-update-now.service without a password.
    polkit.addRule(function(action, subject) {
      if (action.id == "org.freedesktop.systemd1.manage-units" &&
          (action.lookup("unit") == "tiffin-pull.service" || action.lookup("unit") == "tiffin-update-now.service") &&
          action.lookup("verb") == "start" &&
          (${lib.concatMapStringsSep " || " (g: "subject.isInGroup(${builtins.toJSON g})") triggerGroups})) {
        return polkit.Result.YES;
      }
    });
  '';
  # With notifications: the same groups may postpone a restart (`tiffin reboot
  # --postpone`, the notification's button), which starts only an instance of
  # tiffin-postpone@.service named by a number of seconds.
  postponeRule = ''
    // tiffin: members of ${lib.concatStringsSep ", " triggerGroups} may postpone a restart (tiffin-postpone@SECONDSs.service).
    polkit.addRule(function(action, subject) {
      if (action.id == "org.freedesktop.systemd1.manage-units" &&
          /^tiffin-postpone@[0-9]{1,7}s\.service$/.test(action.lookup("unit")) &&
          action.lookup("verb") == "start" &&
          (${lib.concatMapStringsSep " || " (g: "subject.isInGroup(${builtins.toJSON g})") triggerGroups})) {
        return polkit.Result.YES;
      }
    });
  '';
  desktopItem = pkgs.makeDesktopItem {
    name = "tiffin-update-now";
    desktopName = "Update this computer now";
    comment = "Fetch and apply this computer's configuration from the tiffin server now";
    exec = "${config.systemd.package}/bin/systemctl start --no-block tiffin-update-now.service";
    icon = "system-software-update";
    categories = ["System" "Settings"];
    terminal = false;
  };
  # A one-shot unit running `tiffin pull ARGS` (the timer's, the resume's, the
  # button's): the key made first, nixos-rebuild's PATH and environment. The
  # pull runs nixos-rebuild switch, which activates a new system while the unit
  # is still running: the switch must not restart or stop it.
  pullUnit = args: {
    requires = ["tiffin-key.service"];
    restartIfChanged = false;
    unitConfig.X-StopOnRemoval = false;
    environment = pullEnvironment;
    path = pullPath;
    serviceConfig = {
      Type = "oneshot";
      ExecStart = "${lib.getExe cfg.package} pull ${args}--config /etc/tiffin/client.toml";
      TimeoutStartSec = cfg.timeout;
    };
  };
  # systemd.special(7): a unit ordered after and wanted by the sleep targets
  # starts once the system has resumed (suspend.target is reached only when
  # systemd-suspend.service returns, after the wake-up). Independent of
  # powerManagement's post-resume.target.
  sleepTargets = ["suspend.target" "hibernate.target" "hybrid-sleep.target" "suspend-then-hibernate.target"];
  # The unit file the watcher compares after each apply: when a switch changed
  # it (a new tiffin, new options), the watcher exits and systemd starts the new one.
  watchUnitFile = "/etc/systemd/system/tiffin-watch.service";
in {
  meta.maintainers = [];

  options.services.tiffin.client = {
    enable = lib.mkEnableOption "the tiffin client, which polls a tiffin server from a systemd timer and applies this host's published configuration with nixos-rebuild";

    package = lib.mkOption {
      type = lib.types.package;
      # Without its test suite: a host must not compile and run tiffin's tests
      # during its rebuild (see nix/package.nix).
      default = pkgs.callPackage ../package.nix {doCheck = false;};
      defaultText = lib.literalMD "tiffin, built from this flake with the system's nixpkgs (without running its tests)";
      description = "The tiffin package the client runs.";
    };

    host = lib.mkOption {
      type = lib.types.strMatching "[a-z][a-z0-9-]*";
      default = config.networking.hostName;
      defaultText = lib.literalExpression "config.networking.hostName";
      example = "web-1";
      description = ''
        This host's name in the fleet: its directory `hosts/<host>/` in the
        fleet repository and the `nixosConfigurations.<host>` the rebuild
        builds.
      '';
    };

    server = lib.mkOption {
      type = lib.types.str;
      example = "tiffin.example.org";
      description = "Host name or address of the tiffin server (its OpenSSH daemon).";
    };

    port = lib.mkOption {
      type = lib.types.port;
      default = 22;
      description = "TCP port of the server's OpenSSH daemon.";
    };

    user = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "tiffin-web-1";
      description = ''
        Account on the server. `null` leaves it to tiffin: the fleet's
        `user_prefix` (by default `tiffin-`) followed by {option}`host`.
      '';
    };

    identityFile = lib.mkOption {
      type = lib.types.strMatching "/.+";
      default = "/etc/tiffin/id_ed25519";
      description = ''
        Private key (OpenSSH format) this host logs in with. When the file is
        missing, the service creates an ed25519 key there on its first start
        and logs the public half: give that to `tiffin host add <host> --key`.
        A string, not a Nix path, so the key never enters the Nix store.
      '';
    };

    serverPublicKey = lib.mkOption {
      type = lib.types.singleLineStr;
      example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMGQC1aCaZX2zZqN9X6F3k//2aO41CBiBRm3y87h9W3Q";
      description = ''
        The server's SSH host public key, pinned: a server presenting any
        other key is refused before anything is read. Read it on the server
        from {file}`/etc/ssh/ssh_host_ed25519_key.pub`.
      '';
    };

    interval = lib.mkOption {
      type = lib.types.str;
      default = "*:0/15";
      example = "hourly";
      description = ''
        When to poll, as a systemd calendar expression ({manpage}`systemd.time(7)`).
        Keep it in step with `poll_interval` in the fleet's `fleet.toml` or
        `host.toml` (default 15 minutes): `tiffin status` calls a host stale
        after three intervals without a report.
      '';
    };

    randomizedDelaySec = lib.mkOption {
      type = lib.types.str;
      default = "2min";
      example = "5min";
      description = ''
        Random delay added to each poll ({option}`systemd.timers.<name>.timerConfig`
        `RandomizedDelaySec`), so a fleet does not hit the server all at once.
      '';
    };

    timeout = lib.mkOption {
      type = lib.types.str;
      default = "2h";
      description = ''
        Longest time one poll may take, rebuild included (`TimeoutStartSec`).
        Keep it above `rebuild_timeout` in {option}`settings` (default 1h), so
        tiffin can still report a rebuild that timed out.
      '';
    };

    watch.enable = lib.mkEnableOption ''
      watch mode: `tiffin pull --watch` as the long-running service
      `tiffin-watch.service`, which keeps one SSH session to the server open and
      applies a new release or a `tiffin trigger` within `watch_interval`
      (default 5 s; set it in {option}`settings`). The timer stays as a safety
      net; the two never apply at once (they share the state lock)'';

    allowTrigger.groups = lib.mkOption {
      type = lib.types.listOf (lib.types.strMatching "[a-z_][a-z0-9_-]*");
      default = [];
      example = ["users"];
      description = ''
        Groups whose members may start `tiffin-pull.service` (one poll, now)
        and `tiffin-update-now.service` without a password: a polkit rule
        allows exactly that (the `start` verb on those units, nothing else),
        and a desktop entry "Update this computer now" runs `systemctl start
        tiffin-update-now.service`: `tiffin pull --now --retry-for 1m`, which
        takes a release deferred by {option}`defer.metered` or
        {option}`defer.onBatteryBelow` anyway, retries a failed one at once,
        and waits for a pull already running instead of failing. Empty: no
        rule, no entry, no unit.
      '';
    };

    notify.enable = lib.mkEnableOption ''
      desktop notifications (freedesktop, on each logged-in graphical user's
      session bus, found through logind) for an applied update, a restart
      needed (with its deadline under `reboot = "ask"`), a failed update, a
      pause or quarantine, and a warning ten minutes before tiffin restarts the
      computer. With {option}`allowTrigger.groups`, their members may postpone
      a restart (`tiffin reboot --postpone`, the notification's button): a
      polkit rule lets them start `tiffin-postpone@SECONDSs.service`. See
      tiffin's docs/workstations.md'';

    defer.metered = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        While NetworkManager says the connection is metered (yes or guess-yes),
        the client still checks and reports but does not download or rebuild a
        new release ("deferred: metered"). `tiffin pull --now`, the button and
        `tiffin trigger` take it anyway.
      '';
    };

    defer.onBatteryBelow = lib.mkOption {
      type = lib.types.nullOr (lib.types.ints.between 1 100);
      default = null;
      example = 40;
      description = ''
        While UPower says the computer runs on battery below this charge
        (percent), a new release waits as with {option}`defer.metered`
        ("deferred: on battery"). `null`: never.
      '';
    };

    resume.enable = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = ''
        Whether to pull as soon as the server answers after a suspend or
        hibernation: `tiffin-resume.service`, ordered after and wanted by
        `suspend.target`, `hibernate.target`, `hybrid-sleep.target` and
        `suspend-then-hibernate.target`, runs `tiffin pull --retry-for`
        {option}`resume.retryFor`. It does not wait for
        `network-online.target` (which a resume does not restart): it tries
        again after 1 s, 2 s, 4 s, then every 5 s until the server answers or
        the time is up, and then leaves it to the timer. A failure to reach
        the server never counts against a release. A computer that never
        sleeps never runs it.
      '';
    };

    resume.retryFor = lib.mkOption {
      type = lib.types.strMatching "[0-9]+(s|m|min|h)";
      default = "5m";
      example = "15m";
      description = ''
        How long `tiffin-resume.service` keeps trying to reach the server
        after a resume.
      '';
    };

    confirm.enable = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = ''
        Whether to run `tiffin confirm-boot` at every boot, from
        `tiffin-confirm-boot.service` (after `network-online.target`). It
        matters only after a release tiffin applied with `boot` (the
        release's `[apply] action = "boot"`, a kernel change with
        `reboot = "if-needed"`, or a switch inhibitor): that release is not
        confirmed until this host has booted into it and reached the server.

        At each boot the unit compares {file}`/run/booted-system` with the
        system such a release left pending. Nothing pending, or another
        system booted: it says so and exits at once. The pending system
        booted: it tries a fresh SSH connection to the server (and a read of
        its `CURRENT`) again and again for up to {option}`services.tiffin.client.confirm.timeout`.
        One that works confirms the release. None: tiffin quarantines the
        release (docs/client.md), puts the previous release's files back and
        makes the previous system the boot default with
        `nix-env -p /nix/var/nix/profiles/system --set <previous>` and
        `<previous>/bin/switch-to-configuration boot`, which writes the
        default boot entry the same way for GRUB and for systemd-boot (the
        failed generation stays in the menu, no longer the default), then
        reboots once (`systemctl reboot`). Never a loop: the quarantined
        generation is not booted again automatically, and when setting the
        boot default fails, tiffin does not reboot.

        tiffin does not use systemd-boot's boot counting, and a generation
        that never boots far enough to start this unit (a kernel panic, a
        hang or crash before `multi-user.target`'s units start) is not
        covered: for that, pick the previous generation in the boot
        loader's menu, or use systemd-boot's boot counting.

        A laptop that often boots away from any network would roll a good
        release back: give it a longer {option}`services.tiffin.client.confirm.timeout`, or
        `[apply] confirm = false` in its `host.toml`. With `false` here there
        is no unit: a pending boot is confirmed by the next `tiffin pull`
        that reaches the server, and never rolled back.
      '';
    };

    confirm.timeout = lib.mkOption {
      type = lib.types.nullOr (lib.types.strMatching "[0-9]+ *[a-zA-Z]+( *[0-9]+ *[a-zA-Z]+)*");
      default = null;
      example = "10m";
      description = ''
        How long tiffin keeps trying to reach the server over a fresh SSH
        connection before it rolls a release back: after it activated one
        (`switch`, `test`), and at the first boot into one it applied with
        `boot` (`tiffin-confirm-boot.service`, see {option}`services.tiffin.client.confirm.enable`).
        At boot it counts from the start of the unit, which comes after
        `network-online.target` (on a host without a network, only when its
        wait-online service gives up). It becomes `confirm_timeout` in
        {file}`/etc/tiffin/client.toml`, written like `"90s"`, `"10m"` or
        `"1h 30m"`; `null` leaves tiffin's default, 3 minutes. A release's
        `[apply] confirm_timeout` (fleet.toml, host.toml) overrides it.
      '';
    };

    cachePublicKey = lib.mkOption {
      type = lib.types.nullOr (lib.types.strMatching "[^:]+:[A-Za-z0-9+/]{43}=");
      default = null;
      example = "fleet-1:txoMHnami2CpfXuGgeJKHMqMToq/kChyvAoKR8vhTQo=";
      description = ''
        The fleet's Nix public key (`nix key convert-secret-to-public` of the
        server's {option}`services.tiffin.server.build.signingKeyFile`). A
        release built on the server (`[apply] build = "server"`) is imported
        only when its closure is signed with this key; it becomes
        `cache_public_key` in {file}`/etc/tiffin/client.toml`.
      '';
    };

    trust = lib.mkOption {
      type = lib.types.nullOr (lib.types.submodule {
        options = {
          version = lib.mkOption {
            type = lib.types.ints.positive;
            example = 1;
            description = ''
              The root's version, fleet.toml's `[trust] version`: raised by
              one at each rotation of the admins' keys. The host never accepts
              a root of a lower version than the one it holds.
            '';
          };
          threshold = lib.mkOption {
            type = lib.types.ints.positive;
            example = 2;
            description = ''
              How many distinct keys of {option}`keys` must have signed a
              release's statement (k of n) before this host applies it. At
              most the number of keys.
            '';
          };
          keys = lib.mkOption {
            type = lib.types.nonEmptyListOf (lib.types.strMatching "(ssh-ed25519|sk-ssh-ed25519@openssh[.]com) [A-Za-z0-9+/=]+( .*)?");
            example = [
              "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv0F/EMgr0VKJtAWiIm+AEip+1wxUFWA08fWuUB5qDC alice@laptop"
              "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIA6dkD320lyE5ol4Pk3CL/IH+GrQZirQhq8MA2n4psgmAAAABHNzaDo= bob@yubikey"
            ];
            description = ''
              The admins' public keys, one OpenSSH public key line each
              (`ssh-ed25519 AAAA… alice@laptop`), as in fleet.toml's `[trust]
              keys`. Only `ssh-ed25519` and FIDO `sk-ssh-ed25519@openssh.com`
              keys are accepted; the comment is kept for the reader.
            '';
          };
        };
      });
      default = null;
      example = lib.literalExpression ''
        {
          version = 1;
          threshold = 2;
          keys = [
            "ssh-ed25519 AAAA… alice@laptop"
            "sk-ssh-ed25519@openssh.com AAAA… bob@yubikey"
            "ssh-ed25519 AAAA… ci"
          ];
        }
      '';
      description = ''
        The fleet's root of trust this host is pinned to: the `[trust]` table
        of {file}`/etc/tiffin/client.toml` (version, threshold and the admins'
        keys; tiffin's docs/signing.md). It is written at enrollment, in the
        configuration the host is installed with, and each signed release
        carries it on. The fleet template's {file}`common/tiffin.nix` sets it
        from the `[trust]` section of the fleet's {file}`fleet.toml` (its
        version, threshold and keys; `expiry` and `warn_before` are for the
        admins' tools), so it is rarely set by hand.

        With it, the host applies only a release whose statement (this host's
        name, the release id, a seq and an expiry) is signed by
        {option}`threshold` distinct keys of the root, and refuses, reporting
        why and applying nothing: a release with no statement (an unsigned
        release), a statement for another host or release, signed by too few
        of the keys, past its expiry (the host keeps what it runs and reports
        `expired`), or older than the release it runs (a rollback); and a new
        root (a rotation of the keys) not signed by the threshold of both the
        old and the new keys. A root it adopted through a rotation is kept in
        its state directory (`trust-root.toml`); the host never goes back to a
        lower version.

        `null` (the default): releases are trusted as the server serves them,
        as in a fleet without signing.
      '';
    };

    settings = lib.mkOption {
      type = lib.types.submodule {freeformType = settingsFormat.type;};
      default = {};
      example = {
        rebuild_timeout = "30m";
        io_timeout = "2m";
      };
      description = ''
        Further keys of {file}`/etc/tiffin/client.toml` (tiffin's
        `docs/formats.md`, "Client"), such as `state_dir`, `root`, `rebuild`
        or the timeouts. `host`, `server`, `user`, `identity`, `server_key`,
        `confirm_timeout` and `trust` come from the options above and cannot
        be set here.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    environment.etc."tiffin/client.toml".source = configFile;
    environment.systemPackages = [cfg.package] ++ lib.optional (triggerGroups != []) desktopItem;

    security.polkit = lib.mkIf (triggerGroups != []) {
      enable = true;
      extraConfig = polkitRule + lib.optionalString cfg.notify.enable postponeRule;
    };

    # `tiffin reboot --postpone`, run as root for a user polkit lets start it.
    systemd.services."tiffin-postpone@" = lib.mkIf cfg.notify.enable {
      description = "tiffin: postpone this computer's restart by %i";
      serviceConfig = {
        Type = "oneshot";
        ExecStart = "${lib.getExe cfg.package} reboot --postpone %i --config /etc/tiffin/client.toml";
      };
    };

    systemd.tmpfiles.settings."10-tiffin-client".${stateDir}.d = {
      mode = "0700";
      user = "root";
      group = "root";
    };

    # This host's key, made once when it is missing (see createKey).
    systemd.services.tiffin-key = {
      description = "tiffin: this host's SSH key for the tiffin server";
      path = [config.programs.ssh.package pkgs.coreutils];
      script = createKey;
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
      };
    };

    systemd.services.tiffin-pull =
      pullUnit ""
      // {
        description = "tiffin: fetch and apply this host's configuration";
        wants = ["network-online.target"];
        after = ["network-online.target" "tiffin-key.service"];
        startAt = cfg.interval;
      };

    # After a resume: pull once the server answers (see resume.enable). It
    # shares the state lock with the timer's pull and the watcher: --retry-for
    # waits for a pull already running, then finds the release unchanged or
    # applies it.
    systemd.services.tiffin-resume = lib.mkIf cfg.resume.enable (
      pullUnit "--retry-for ${cfg.resume.retryFor} "
      // {
        description = "tiffin: pull as soon as the server answers after a resume";
        wantedBy = sleepTargets;
        after = sleepTargets ++ ["tiffin-key.service"];
      }
    );

    # The user's button (the desktop entry; polkit lets allowTrigger.groups
    # start it): a pull with --now, which takes a deferred release anyway.
    systemd.services.tiffin-update-now = lib.mkIf (triggerGroups != []) (
      pullUnit "--now --retry-for 1m "
      // {
        description = "tiffin: update this computer now (the user's button)";
        wants = ["network-online.target"];
        after = ["network-online.target" "tiffin-key.service"];
      }
    );

    # Watch mode. The apply it runs switches the system: a switch must never
    # stop or restart it (restartIfChanged = false). When the switch changed
    # this unit (a new tiffin, new options), the watcher notices after its
    # report (--exit-on-change), exits, and Restart=always starts the new one.
    # SIGTERM (systemctl stop) goes to tiffin only (KillMode=mixed): idle it
    # exits at once; applying, it lets the rebuild finish and report first.
    systemd.services.tiffin-watch = lib.mkIf cfg.watch.enable {
      description = "tiffin: apply this host's configuration as soon as it is published";
      wantedBy = ["multi-user.target"];
      wants = ["network-online.target"];
      after = ["network-online.target" "tiffin-key.service"];
      restartIfChanged = false;
      unitConfig.X-StopOnRemoval = false;
      environment = pullEnvironment;
      path = pullPath;
      requires = ["tiffin-key.service"];
      serviceConfig = {
        Type = "simple";
        ExecStart = "${lib.getExe cfg.package} pull --watch --config /etc/tiffin/client.toml --exit-on-change ${watchUnitFile}";
        Restart = "always";
        RestartSec = "5s";
        KillMode = "mixed";
        TimeoutStopSec = cfg.timeout;
      };
    };

    # Confirms, at boot, a release applied with `boot` (see confirm.enable):
    # tiffin confirm-boot. It may set the boot default (nix-env,
    # switch-to-configuration boot) and reboot, so it has the pull's PATH and
    # environment (systemctl comes with NixOS's default unit PATH).
    #
    # Type=exec: multi-user.target (and graphical.target, the login screen)
    # is ordered after every unit it wants, and waits for it to be "started";
    # for exec that is when tiffin was executed, not when it ends, so no boot
    # waits up to the confirm timeout for the server. RemainAfterExit: it
    # stays active after it ran, so a later switch (which starts the active
    # targets again, and with them every inactive unit they want) does not
    # run it again.
    #
    # A switch never stops or restarts it (restartIfChanged = false,
    # X-StopOnRemoval = false): it may be the one setting the boot default.
    # The switch that first adds the unit starts it, like any new unit of
    # multi-user.target; that is harmless: tiffin confirm-boot does nothing
    # unless /run/booted-system is the system a `boot` release left pending,
    # and the switch does not wait for it (Type=exec).
    #
    # tiffin-pull.service and tiffin-watch.service are deliberately NOT
    # ordered after it (nor do they require it): a pull that reaches the
    # server confirms a pending boot too, and must not wait for this unit, or
    # fail with it.
    systemd.services.tiffin-confirm-boot = lib.mkIf cfg.confirm.enable {
      description = "tiffin: confirm the boot into a release, or boot the previous one";
      wantedBy = ["multi-user.target"];
      wants = ["network-online.target"];
      after = ["network-online.target" "tiffin-key.service"];
      requires = ["tiffin-key.service"];
      restartIfChanged = false;
      unitConfig.X-StopOnRemoval = false;
      environment = pullEnvironment;
      path = pullPath;
      serviceConfig = {
        Type = "exec";
        RemainAfterExit = true;
        ExecStart = "${lib.getExe cfg.package} confirm-boot --config /etc/tiffin/client.toml";
      };
    };

    systemd.timers.tiffin-pull.timerConfig = {
      Persistent = true;
      RandomizedDelaySec = cfg.randomizedDelaySec;
    };
  };
}
