# The NixOS modules evaluated with nixpkgs' real module system (lib only) over
# stub declarations of the NixOS options they set, for two example machines.
# Catches wrong option types, missing descriptions and failing assertions
# without a NixOS. static-check runs it when NIXPKGS_LIB names a nixpkgs
# lib/ directory (.ci/run sets it; docs/nixos.md says how to point it at a
# checkout of your own).
{nixpkgsLib}: let
  lib = import nixpkgsLib;
  inherit (import ./nixos-stubs.nix {inherit lib;}) pkgs stubs;
  eval = modules: lib.evalModules {modules = [stubs {_module.args.pkgs = pkgs;}] ++ modules;};
  repo = ../..;
  client = eval [
    (repo + "/nix/modules/client.nix")
    {
      services.tiffin.client = {
        enable = true;
        server = "fleet.example.org";
        serverPublicKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMGQC1aCaZX2zZqN9X6F3k//2aO41CBiBRm3y87h9W3Q x";
        settings.rebuild_timeout = "30m";
      };
    }
  ];
  # Watch mode and the user's button.
  watching = eval [
    (repo + "/nix/modules/client.nix")
    {
      services.tiffin.client = {
        enable = true;
        server = "fleet.example.org";
        serverPublicKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMGQC1aCaZX2zZqN9X6F3k//2aO41CBiBRm3y87h9W3Q x";
        watch.enable = true;
        allowTrigger.groups = ["users" "wheel"];
      };
    }
  ];
  w = watching.config;
  server = eval [
    (repo + "/nix/modules/server.nix")
    {
      services.tiffin.server = {
        enable = true;
        hosts.client1.publicKey = "ssh-ed25519 AAAA1 c1";
        hosts.client2.publicKey = "ssh-ed25519 AAAA2 c2";
        sshdExtra = ["ClientAliveInterval 5 "];
      };
    }
  ];
  metrics = eval [
    (repo + "/nix/modules/server.nix")
    {
      services.tiffin.server = {
        enable = true;
        hosts.client1.publicKey = "ssh-ed25519 AAAA1 c1";
        metrics = {
          enable = true;
          fleet = "/srv/fleet";
          interval = "30s";
        };
        rollout = {
          enable = true;
          fleet = "/srv/fleet";
        };
      };
    }
  ];
  # sshd_config goes through a shell here-document: such lines are refused.
  shellLines = eval [
    (repo + "/nix/modules/server.nix")
    {
      services.tiffin.server = {
        enable = true;
        hosts.client1.publicKey = "ssh-ed25519 AAAA1 c1";
        sshdExtra = ["ClientAliveInterval 30" "Banner /etc/$HOST" "ForceCommand `id`" "ChrootDirectory C:\\x" "EOL"];
      };
    }
  ];
  # Prebuilt releases: the server builds and signs, the client trusts the fleet key.
  prebuiltServer = eval [
    (repo + "/nix/modules/server.nix")
    {
      services.tiffin.server = {
        enable = true;
        hosts.client1.publicKey = "ssh-ed25519 AAAA1 c1";
        build.enable = true;
        build.signingKeyFile = "/var/lib/tiffin/signing-key";
      };
    }
  ];
  keyInStore = eval [
    (repo + "/nix/modules/server.nix")
    {
      services.tiffin.server = {
        enable = true;
        build.enable = true;
        build.signingKeyFile = "${builtins.storeDir}/00000000000000000000000000000000-signing-key";
      };
    }
  ];
  prebuiltClient = eval [
    (repo + "/nix/modules/client.nix")
    {
      services.tiffin.client = {
        enable = true;
        server = "fleet.example.org";
        serverPublicKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMGQC1aCaZX2zZqN9X6F3k//2aO41CBiBRm3y87h9W3Q x";
        cachePublicKey = "fleet-1:txoMHnami2CpfXuGgeJKHMqMToq/kChyvAoKR8vhTQo=";
      };
    }
  ];
  # The boot confirmation: off, and with a timeout of its own.
  # A client with one more option set.
  withClient = extra:
    eval [
      (repo + "/nix/modules/client.nix")
      {
        services.tiffin.client =
          {
            enable = true;
            server = "fleet.example.org";
            serverPublicKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMGQC1aCaZX2zZqN9X6F3k//2aO41CBiBRm3y87h9W3Q x";
          }
          // extra;
      }
    ];
  withConfirm = confirm: withClient {inherit confirm;};
  noConfirm = withConfirm {enable = false;};
  # Signed releases: the root of trust this host is pinned to.
  withTrust = trust: withClient {inherit trust;};
  trustKeys = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv0F/EMgr0VKJtAWiIm+AEip+1wxUFWA08fWuUB5qDC alice@laptop"
    "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIA6dkD320lyE5ol4Pk3CL/IH+GrQZirQhq8MA2n4psgmAAAABHNzaDo= bob@yubikey"
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMGQC1aCaZX2zZqN9X6F3k//2aO41CBiBRm3y87h9W3Q ci"
  ];
  trusted = withTrust {
    version = 2;
    threshold = 2;
    keys = trustKeys;
  };
  confirmTimeout = withConfirm {timeout = "90s";};
  # A workstation (docs/workstations.md): notifications, deferral, the postpone rule.
  workstation = withClient {
    notify.enable = true;
    defer.metered = true;
    defer.onBatteryBelow = 40;
    allowTrigger.groups = ["users"];
  };
  # client.toml as the module writes it (the stub's TOML generator writes JSON;
  # static-check evaluates this file with --read-write-mode, so it is written).
  clientToml = cfg: builtins.fromJSON (builtins.readFile cfg.environment.etc."tiffin/client.toml".source);
  evaluates = cfg: (builtins.tryEval (builtins.deepSeq (clientToml cfg) true)).success;
  undocumented = opts: lib.filter (o: (o.description or null) == null) (lib.collect lib.isOption opts);
  c = client.config;
  s = server.config;
in {
  clientService = removeAttrs c.systemd.services.tiffin-pull ["path" "environment"];
  clientTimer = c.systemd.timers;
  clientTmpfiles = c.systemd.tmpfiles.settings;
  serverUsers = s.users.users;
  serverTmpfiles = s.systemd.tmpfiles.settings;
  serverEtc = s.environment.etc;
  sshd = s.services.openssh.extraConfig;
  reportsMounts = s.fileSystems;
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) s.assertions);
  shellLineAssertions = map (a: a.message) (lib.filter (a: !a.assertion) shellLines.config.assertions);
  # Without the options: no watcher, no rule, no desktop entry.
  plainClient = {
    watch = c.systemd.services ? tiffin-watch;
    polkit = c.security.polkit.enable;
    packages = map (p: p.name) c.environment.systemPackages;
  };
  watchService = removeAttrs w.systemd.services.tiffin-watch ["path" "environment"];
  watchSharesPull = w.systemd.services.tiffin-watch.path == w.systemd.services.tiffin-pull.path && w.systemd.services.tiffin-watch.environment == w.systemd.services.tiffin-pull.environment;
  watchingPullService = removeAttrs w.systemd.services.tiffin-pull ["path" "environment"];
  watchingTimer = w.systemd.timers;
  keyService = removeAttrs w.systemd.services.tiffin-key ["path"];
  polkit = {inherit (w.security.polkit) enable extraConfig;};
  desktopItems = map (p: p.desktopItem) (builtins.filter (p: p ? desktopItem) w.environment.systemPackages);
  prebuiltAssertions = map (a: a.message) (lib.filter (a: !a.assertion) prebuiltServer.config.assertions);
  prebuiltNix = prebuiltServer.config.nix.settings;
  prebuiltTmpfiles = prebuiltServer.config.systemd.tmpfiles.settings."10-tiffin-server-build";
  keyInStoreAssertions = map (a: a.message) (lib.filter (a: !a.assertion) keyInStore.config.assertions);
  prebuiltClientKey = prebuiltClient.config.services.tiffin.client.cachePublicKey;
  # A key that is not NAME:BASE64 of 32 bytes does not evaluate.
  badClientKey =
    (builtins.tryEval
      (prebuiltClient.extendModules {
        modules = [{services.tiffin.client.cachePublicKey = lib.mkForce "fleet-1";}];
      })
      .config
      .services
      .tiffin
      .client
      .cachePublicKey)
    .success;
  undocumentedClient = map (o: o.loc) (undocumented client.options.services.tiffin);
  undocumentedServer = map (o: o.loc) (undocumented server.options.services.tiffin);
  metricsService = metrics.config.systemd.services.tiffin-metrics;
  metricsTimer = metrics.config.systemd.timers.tiffin-metrics;
  metricsTmpfiles = metrics.config.systemd.tmpfiles.settings."10-tiffin-metrics";
  nodeExporter = metrics.config.services.prometheus.exporters.node;
  rolloutService = metrics.config.systemd.services.tiffin-rollout;
  rolloutTimer = metrics.config.systemd.timers.tiffin-rollout;
  serverWithoutMetrics = builtins.attrNames s.systemd.services;
  # tiffin-confirm-boot.service: on by default, off with confirm.enable = false;
  # confirm.timeout reaches client.toml as confirm_timeout.
  confirmService = removeAttrs c.systemd.services.tiffin-confirm-boot ["path" "environment"];
  confirmSharesPull = c.systemd.services.tiffin-confirm-boot.path == c.systemd.services.tiffin-pull.path && c.systemd.services.tiffin-confirm-boot.environment == c.systemd.services.tiffin-pull.environment;
  watchingUnits = builtins.attrNames w.systemd.services;
  noConfirmUnits = builtins.attrNames noConfirm.config.systemd.services;
  clientToml = clientToml c;
  noConfirmToml = clientToml noConfirm.config;
  confirmTimeoutToml = clientToml confirmTimeout.config;
  # Not a duration, or confirm_timeout in settings as well as confirm.timeout: refused.
  badConfirmTimeout = evaluates (withConfirm {timeout = "soon";}).config;
  # services.tiffin.client.trust: client.toml's [trust] (version, threshold,
  # keys), nothing when null; refused: settings.trust beside it, a key type
  # tiffin does not accept, a threshold of 0 or above the number of keys.
  trustOption = c.services.tiffin.client.trust;
  trustToml = clientToml trusted.config;
  trustKeys = trustKeys;
  trustUnits = builtins.attrNames trusted.config.systemd.services;
  trustTwice =
    evaluates
    (trusted.extendModules {
      modules = [{services.tiffin.client.settings.trust = {version = 1;};}];
    })
    .config;
  trustRsaKey =
    evaluates
    (withTrust {
      version = 1;
      threshold = 1;
      keys = ["ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 rsa@laptop"];
    })
    .config;
  trustEcdsaSk =
    evaluates
    (withTrust {
      version = 1;
      threshold = 1;
      keys = ["sk-ecdsa-sha2-nistp256@openssh.com AAAAInNrLWVjZHNh carol@token"];
    })
    .config;
  trustNoKeys =
    evaluates
    (withTrust {
      version = 1;
      threshold = 1;
      keys = [];
    })
    .config;
  trustThresholdZero =
    evaluates
    (withTrust {
      version = 1;
      threshold = 0;
      keys = trustKeys;
    })
    .config;
  trustThresholdAbove =
    evaluates
    (withTrust {
      version = 1;
      threshold = 4;
      keys = trustKeys;
    })
    .config;
  trustVersionZero =
    evaluates
    (withTrust {
      version = 0;
      threshold = 1;
      keys = trustKeys;
    })
    .config;
  trustExtraKey =
    evaluates
    (withTrust {
      version = 1;
      threshold = 1;
      keys = trustKeys;
      expiry = "30d";
    })
    .config;
  workstationToml = clientToml workstation.config;
  workstationPolkit = workstation.config.security.polkit.extraConfig;
  workstationPostpone = workstation.config.systemd.services."tiffin-postpone@".serviceConfig;
  plainUnits = builtins.attrNames c.systemd.services;
  badBattery = evaluates (withClient {defer.onBatteryBelow = 0;}).config;
  # After a resume (resume.enable, on by default) and the user's button (with allowTrigger.groups).
  resumeService = removeAttrs c.systemd.services.tiffin-resume ["path" "environment"];
  resumeSharesPull = c.systemd.services.tiffin-resume.path == c.systemd.services.tiffin-pull.path && c.systemd.services.tiffin-resume.environment == c.systemd.services.tiffin-pull.environment;
  resumeLonger = (withClient {resume.retryFor = "15m";}).config.systemd.services.tiffin-resume.serviceConfig.ExecStart;
  noResumeUnits = builtins.attrNames (withClient {resume.enable = false;}).config.systemd.services;
  badRetryFor = (builtins.tryEval (builtins.deepSeq (withClient {resume.retryFor = "5m; rm -rf /";}).config.systemd.services.tiffin-resume.serviceConfig.ExecStart true)).success;
  updateNowService = removeAttrs w.systemd.services.tiffin-update-now ["path" "environment"];
  updateNowSharesPull = w.systemd.services.tiffin-update-now.path == w.systemd.services.tiffin-pull.path && w.systemd.services.tiffin-update-now.environment == w.systemd.services.tiffin-pull.environment;
  confirmTimeoutTwice =
    evaluates
    (confirmTimeout.extendModules {
      modules = [{services.tiffin.client.settings.confirm_timeout = "5m";}];
    })
    .config;
}
