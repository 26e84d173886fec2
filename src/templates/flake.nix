# The generic flake every host links to (hosts/<name>/flake.nix -> here).
# A client runs: nixos-rebuild <action> --flake <release>/config#<host>
# and the configuration names itself through networking.hostName.
{
  description = "A host of a tiffin fleet";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs = {nixpkgs, ...}: let
    system = nixpkgs.lib.nixosSystem {modules = [./configuration.nix];};
  in {
    nixosConfigurations.${system.config.networking.hostName} = system;
  };
}
