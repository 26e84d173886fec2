# One NixOS VM test per lab scenario in vm-scenarios/*.toml, named
# vm-<scenario>; `nix flake check` runs them all, `nix build
# .#checks.<system>.vm-<scenario>` one.
{
  pkgs,
  self,
  nixpkgs,
}: let
  inherit (pkgs) lib;
  dir = ../vm-scenarios;
  files =
    if builtins.pathExists dir
    then lib.filter (f: lib.hasSuffix ".toml" f) (lib.attrNames (lib.filterAttrs (_: type: type == "regular") (builtins.readDir dir)))
    else [];
  scenarioTest = import ./scenario-test.nix {inherit pkgs self nixpkgs;};
in
  lib.listToAttrs (map (file: let
      name = lib.removeSuffix ".toml" file;
    in {
      name = "vm-${name}";
      value = scenarioTest {
        inherit name;
        text = builtins.readFile (dir + "/${file}");
      };
    })
    files)
