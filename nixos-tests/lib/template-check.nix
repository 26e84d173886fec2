# A host's flake as `tiffin init` and `tiffin host add` make it, evaluated the
# way a client's `nixos-rebuild --flake <release>/config#<host>` evaluates it,
# with stand-ins for nixpkgs: `nixpkgs.lib` is nixpkgs' real lib, and
# `lib.nixosSystem` evaluates the flake's modules with the real module system
# over stub NixOS options (nixos-stubs.nix). The `tiffin` input is this
# repository's flake.nix, so the client module is the one users get. Run by
# static-check (NIXPKGS_LIB) on a release `tiffin publish` wrote.
#
# config: the release's config/ directory (or a host directory).
{
  nixpkgsLib,
  config,
}: let
  lib = import nixpkgsLib;
  inherit (import ./nixos-stubs.nix {inherit lib;}) pkgs stubs;
  fakePath = n: "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" n)}-${n}";

  nixpkgs = {
    outPath = fakePath "nixpkgs-source";
    lib =
      lib
      // {
        nixosSystem = {modules, ...}: let
          eval = lib.evalModules {modules = [stubs {_module.args.pkgs = pkgs;}] ++ modules;};
        in
          eval
          // {
            config = eval.config // {system.build.toplevel = fakePath "nixos-system-${eval.config.networking.hostName}";};
          };
      };
  };
  tiffinFlake = import ../../flake.nix;
  tiffin =
    tiffinFlake.outputs {
      self = tiffin;
      inherit nixpkgs;
    }
    // {outPath = ../..;};

  fleetFlake = import (config + "/flake.nix");
  outputs = fleetFlake.outputs {
    self = outputs // {outPath = config;};
    inherit nixpkgs tiffin;
  };
in {
  inputs = builtins.attrNames fleetFlake.inputs;
  tiffinFollows = fleetFlake.inputs.tiffin.inputs.nixpkgs.follows or null;
  hosts =
    lib.mapAttrs (_: system: let
      c = system.config.services.tiffin.client;
    in {
      inherit (c) enable host server port serverPublicKey interval user trust;
      package = c.package.name;
      sshd = {inherit (system.config.services.openssh.settings) PasswordAuthentication KbdInteractiveAuthentication;};
      timer = system.config.systemd.timers.tiffin-pull or null;
      service = system.config.systemd.services ? tiffin-pull;
      clientToml = let
        etc = system.config.environment.etc;
      in
        if etc ? "tiffin/client.toml"
        then builtins.fromJSON (builtins.readFile etc."tiffin/client.toml".source)
        else null;
    })
    outputs.nixosConfigurations;
}
