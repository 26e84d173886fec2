# Stand-ins for what tiffin's modules use of NixOS and nixpkgs: stub
# declarations of the NixOS options they set or read, and a `pkgs` with the
# packages and builders they name (plain attribute sets). With nixpkgs' real
# lib, `lib.evalModules` over these checks option types, defaults and
# assertions without a NixOS. Used by module-eval.nix and template-check.nix.
{lib}: let
  pkg = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    meta.mainProgram = name;
  };
  pkgs = rec {
    inherit lib;
    tiffin = pkg "tiffin";
    # For the flake's modules, which build the package from the system's pkgs.
    # As nixpkgs' callPackage: each argument the function asks for, from here.
    callPackage = f: args: let
      fn = import f;
    in
      fn (builtins.intersectAttrs (builtins.functionArgs fn) pkgs // args);
    rustPlatform.buildRustPackage = a: pkg "${a.pname}-${a.version}" // {inherit (a) meta;};
    openssh = pkg "openssh";
    prometheus = pkg "prometheus" // {cli = pkg "prometheus-cli";};
    coreutils = pkg "coreutils";
    gitMinimal = pkg "git";
    gnutar = pkg "gnutar";
    gzip = pkg "gzip";
    xz = {bin = pkg "xz";};
    systemd = pkg "systemd";
    # Like nixpkgs' makeDesktopItem: a package holding share/applications/<name>.desktop;
    # the stub keeps the entry's fields to check them.
    makeDesktopItem = a: pkg "${a.name}.desktop" // {desktopItem = a;};
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
        fileSystems = mkOption {
          type = types.attrsOf (types.submodule {
            options = {
              device = mkOption {type = types.str;};
              fsType = mkOption {type = types.str;};
              options = mkOption {
                type = types.listOf types.str;
                default = [];
              };
            };
          });
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
        nixpkgs.hostPlatform = mkOption {
          type = types.either types.str (types.attrsOf types.anything);
          default = "x86_64-linux";
        };
        system.stateVersion = mkOption {
          type = types.str;
          default = "26.05";
        };
        services.openssh.enable = mkOption {
          type = types.bool;
          default = false;
        };
        services.openssh.settings = mkOption {
          type = types.attrsOf types.anything;
          default = {};
        };
        services.openssh.extraConfig = mkOption {
          type = types.lines;
          default = "";
        };
        nix.envVars = mkOption {default = {};};
        nix.package = mkOption {default = {out = pkg "nix";};};
        programs.ssh.package = mkOption {default = pkg "openssh";};
        systemd.package = mkOption {default = pkg "systemd";};
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
        services.prometheus.exporters.node.enable = mkOption {
          type = types.bool;
          default = false;
        };
        services.prometheus.exporters.node.enabledCollectors = mkOption {
          type = types.listOf types.str;
          default = [];
        };
        services.prometheus.exporters.node.extraFlags = mkOption {
          type = types.listOf types.str;
          default = [];
        };
        security.polkit.enable = mkOption {
          type = types.bool;
          default = false;
        };
        security.polkit.extraConfig = mkOption {
          type = types.lines;
          default = "";
        };
        nix.settings = mkOption {
          type = types.attrsOf types.anything;
          default = {};
        };
      };
    };
in {
  inherit pkg pkgs stubs;
}
