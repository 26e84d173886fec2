# One NixOS VM test per lab scenario in vm-scenarios/*.toml, named
# vm-<scenario>, and the VM tests written by hand for what the lab cannot
# show (standalone, below); `nix flake check` runs them all, `nix build
# .#checks.<system>.vm-<name>` one.
#
# A scenario whose test does not evaluate (its translation or one of its
# configurations throws or fails an assertion in a way the test does not
# expect) becomes a check that fails naming the scenario, so it does not stop
# `nix flake check` from evaluating the others. The error itself:
#   nix eval .#checks.<system>.vm-<scenario>.test.drvPath --show-trace
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
      value = let
        test = scenarioTest {
          inherit name;
          text = builtins.readFile (dir + "/${file}");
        };
        evaluated = builtins.tryEval (builtins.seq test.drvPath test);
      in
        if evaluated.success
        then evaluated.value
        else
          pkgs.runCommand "tiffin-${name}-does-not-evaluate" {passthru = {inherit test;};} ''
            echo "nixos-tests: the VM test of vm-scenarios/${file} does not evaluate." >&2
            echo "See why with: nix eval .#checks.${pkgs.stdenv.hostPlatform.system}.vm-${name}.test.drvPath --show-trace" >&2
            exit 1
          '';
    })
    files)
  // {
    # A host added by switching the server reports without a reboot (the
    # reports mount's owner); the lab provisions with `tiffin provision`.
    vm-host-added-by-switch = import ./host-added-by-switch.nix {inherit pkgs self;};
  }
