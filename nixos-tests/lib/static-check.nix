# What nixos-tests/static-check evaluates for one scenario, without nixpkgs:
# the translation with placeholder files where the flake would give real ones.
{
  file,
  name,
  where,
}: let
  placeholder = what: builtins.toFile "static-check-${what}" "# static-check placeholder for ${what}\n";
  t = import ./translate.nix {
    inherit name where;
    text = builtins.readFile file;
    vmFiles = {
      flakeNix = placeholder "flake.nix";
      flakeLock = placeholder "flake.lock";
      tiffinWrapper = placeholder "common-tiffin.nix";
      vmTestNix = placeholder "common-vm-test.nix";
      vmJson = host: placeholder "${host}-tiffin-vm.json";
      evalCheck = host: {
        tree = "/nix/store/00000000000000000000000000000000-tiffin-vm-${host}-config";
        toplevel = "/nix/store/00000000000000000000000000000000-nixos-system-${host}-test";
      };
    };
  };
in {
  inherit (t) testScript machines clients server configurations;
}
