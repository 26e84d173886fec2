# The flake.nix and flake.lock the VM tests put into the fleet repository in
# place of templates/flake.nix: the test's own nixpkgs and this repository,
# both locked as `path:` inputs to store paths the client VMs hold, so
# `nixos-rebuild --flake` inside a VM resolves them offline. Builtins only.
#
# nixpkgs, tiffin: flake inputs (or anything with outPath and narHash).
{
  nixpkgs,
  tiffin,
}: let
  locked = input: {
    type = "path";
    path = "${input.outPath}";
    narHash = input.narHash or (throw "nixos-tests: the flake input at ${input.outPath} has no narHash, so the VM flake cannot lock it");
  };
  original = input: {
    type = "path";
    path = "${input.outPath}";
  };
in {
  flakeNix = ''
    # Written by tiffin's NixOS VM tests in place of templates/flake.nix: the
    # host's configuration.nix plus tiffin's VM test base (the VM's disks,
    # network and test driver backdoor), on the test's own nixpkgs.
    {
      inputs.nixpkgs.url = "path:${nixpkgs.outPath}";
      inputs.tiffin.url = "path:${tiffin.outPath}";
      inputs.tiffin.inputs.nixpkgs.follows = "nixpkgs";

      outputs = {
        nixpkgs,
        tiffin,
        ...
      }: let
        system = tiffin.lib.vmTest.clientSystem {
          inherit nixpkgs;
          configuration = ./configuration.nix;
          vm = builtins.fromJSON (builtins.readFile ./tiffin-vm.json);
        };
      in {
        nixosConfigurations.''${system.config.networking.hostName} = system;
      };
    }
  '';

  # Only narHash makes a path input locked; lastModified is left out on
  # purpose, Nix derives it (0) for a path already in the store.
  flakeLock = builtins.toJSON {
    nodes = {
      nixpkgs = {
        locked = locked nixpkgs;
        original = original nixpkgs;
      };
      tiffin = {
        inputs.nixpkgs = ["nixpkgs"];
        locked = locked tiffin;
        original = original tiffin;
      };
      root.inputs = {
        nixpkgs = "nixpkgs";
        tiffin = "tiffin";
      };
    };
    root = "root";
    version = 7;
  };
}
