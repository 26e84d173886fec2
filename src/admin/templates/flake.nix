# The generic flake every host links to (hosts/<name>/flake.nix -> here).
# A client runs: nixos-rebuild <action> --flake <release>/config#<host>
# and the configuration names itself through networking.hostName.
#
# Every host's system includes tiffin's client module and common/tiffin.nix
# (the fleet's server, its pinned key and the poll interval, read from
# fleet.toml), so the system a pull switches to keeps pulling. They are listed
# here rather than in configuration.nix so that no host drops them by
# leaving out an import; a host leaves tiffin only on purpose: with
# `services.tiffin.client.enable = false;` in its configuration.nix AND
# `[apply] allow_leaving = true` in its host.toml (without it, the client
# refuses a release whose system would stop it pulling).
{
  description = "A host of a tiffin fleet";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
  # Where you get tiffin from (the flake that provides nixosModules.client):
  # replace the placeholder, then run `nix flake lock` in templates/ and
  # commit flake.lock (`tiffin check` warns while it is the placeholder).
  inputs.tiffin.url = "github:OWNER/tiffin";
  inputs.tiffin.inputs.nixpkgs.follows = "nixpkgs";

  outputs = {
    nixpkgs,
    tiffin,
    ...
  }: let
    system = nixpkgs.lib.nixosSystem {
      modules = [
        ./configuration.nix
        tiffin.nixosModules.client
        ./common/tiffin.nix
      ];
    };
  in {
    nixosConfigurations.${system.config.networking.hostName} = system;
  };
}
