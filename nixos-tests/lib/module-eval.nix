# The NixOS modules evaluated with nixpkgs' real module system (lib only) over
# stub declarations of the NixOS options they set, for two example machines.
# Catches wrong option types, missing descriptions and failing assertions
# without a NixOS. static-check runs it when NIXPKGS_LIB names a nixpkgs
# lib/ directory (CI has none: no network to fetch one).
{nixpkgsLib}: let
  lib = import nixpkgsLib;
  pkg = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    meta.mainProgram = name;
  };
  pkgs = {
    tiffin = pkg "tiffin";
    coreutils = pkg "coreutils";
    gitMinimal = pkg "git";
    gnutar = pkg "gnutar";
    gzip = pkg "gzip";
    xz = {bin = pkg "xz";};
    formats.toml = {}: {
      type = lib.types.attrsOf lib.types.anything;
      generate = name: value: builtins.toFile name (builtins.toJSON value);
    };
  };
  stubs = {lib, ...}:
    with lib; {
      options = {
        networking.hostName = mkOption {
          type = types.str;
          default = "web-1";
        };
        networking.proxy.envVars = mkOption {default = {};};
        environment.etc = mkOption {
          type = types.attrsOf (types.submodule {
            options = {
              text = mkOption {
                type = types.nullOr types.lines;
                default = null;
              };
              source = mkOption {
                type = types.nullOr types.path;
                default = null;
              };
              mode = mkOption {
                type = types.str;
                default = "symlink";
              };
            };
          });
          default = {};
        };
        environment.systemPackages = mkOption {
          type = types.listOf types.package;
          default = [];
        };
        systemd.services = mkOption {
          type = types.attrsOf (types.attrsOf types.anything);
          default = {};
        };
        systemd.timers = mkOption {
          type = types.attrsOf (types.attrsOf types.anything);
          default = {};
        };
        systemd.tmpfiles.settings = mkOption {
          type = types.attrsOf (types.attrsOf (types.attrsOf (types.attrsOf types.str)));
          default = {};
        };
        users.users = mkOption {
          type = types.attrsOf (types.attrsOf types.anything);
          default = {};
        };
        users.groups = mkOption {
          type = types.attrsOf (types.attrsOf types.anything);
          default = {};
        };
        services.openssh.enable = mkOption {
          type = types.bool;
          default = false;
        };
        services.openssh.extraConfig = mkOption {
          type = types.lines;
          default = "";
        };
        nix.envVars = mkOption {default = {};};
        nix.package = mkOption {default = {out = pkg "nix";};};
        programs.ssh.package = mkOption {default = pkg "openssh";};
        system.build = mkOption {
          type = types.attrsOf types.anything;
          default = {nixos-rebuild = pkg "nixos-rebuild";};
        };
        assertions = mkOption {
          type = types.listOf types.anything;
          default = [];
        };
        meta.maintainers = mkOption {
          type = types.listOf types.anything;
          default = [];
        };
      };
    };
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
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) s.assertions);
  undocumentedClient = map (o: o.loc) (undocumented client.options.services.tiffin);
  undocumentedServer = map (o: o.loc) (undocumented server.options.services.tiffin);
}
