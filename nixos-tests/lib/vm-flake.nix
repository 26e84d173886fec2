# The fleet files the VM tests put into the fleet repository on top of what
# `tiffin init` wrote, and the same files as the host evaluates them to
# pre-build each client's systems. Builtins only.
#
# The VMs use the fleet's own template flake (src/admin/templates/flake.nix), as a
# user's fleet does: only its two input URLs change, to `path:` inputs locked
# to the very store paths of the test's nixpkgs and of this repository, which
# the client VMs hold, so `nixos-rebuild --flake` inside a VM resolves them
# offline. tiffin's client module and common/tiffin.nix come from the
# template; the VM's own parts (qemu-vm, the test driver's backdoor, the
# node's network, an offline Nix) come from common/vm-test.nix. The flake
# adds common/tiffin.nix to every host's system whatever its configuration.nix
# imports, so the VMs move the fleet's common/tiffin.nix to
# common/fleet-tiffin.nix and put there a module importing both.
#
# nixpkgs, tiffin: flake inputs (or anything with outPath and narHash);
# templates: src/admin/templates.
{
  nixpkgs,
  tiffin,
  templates ? ../../src/admin/templates,
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
  template = builtins.readFile (templates + "/flake.nix");
  urls = [
    ''inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";''
    ''inputs.tiffin.url = "github:OWNER/tiffin";''
  ];
  _urls = builtins.all (u:
    if builtins.match ".*${builtins.replaceStrings ["." "/" "[" "]"] ["[.]" "[/]" "\\[" "\\]"] u}.*" (builtins.replaceStrings ["\n"] [" "] template) != null
    then true
    else throw "nixos-tests/lib/vm-flake.nix: src/admin/templates/flake.nix no longer has the line `${u}`: update the URLs the VM flake replaces")
  urls;

  # The common/vm-test.nix text; `vmJson` is how it names the host's
  # tiffin-vm.json (`../tiffin-vm.json` in the fleet, a store file on the host).
  vmTestNix = vmJson: ''
    # Written by tiffin's NixOS VM tests: what makes a fleet system a VM of
    # the test (the disks, the test driver's backdoor, the node's network,
    # nixos-tests/lib/vm-base.nix), as nixpkgs' nixos/tests/nixos-rebuild
    # tests rebuild a test node. The node's data is in ../tiffin-vm.json.
    {
      lib,
      modulesPath,
      ...
    }: let
      vm = builtins.fromJSON (builtins.readFile ${vmJson});
      base = ${builtins.readFile ./vm-base.nix};
    in {
      imports = [
        (modulesPath + "/virtualisation/qemu-vm.nix")
        (modulesPath + "/testing/test-instrumentation.nix")
        vm.networkConfig
        (base vm)
      ];
      # The fleet's configurations name a platform; the VM's is the test's.
      nixpkgs.hostPlatform = lib.mkForce vm.system;
    }
  '';
in
  builtins.seq _urls {
    flakeNix =
      builtins.replaceStrings urls [
        ''inputs.nixpkgs.url = "path:${nixpkgs.outPath}";''
        ''inputs.tiffin.url = "path:${tiffin.outPath}";''
      ]
      template;

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

    # common/tiffin.nix in the VMs: the fleet's own (tiffin init's, moved to
    # fleet-tiffin.nix) and the VM's parts.
    tiffinWrapper = fleetTiffin: vmTest: ''
      # Written by tiffin's NixOS VM tests: the fleet's own tiffin client
      # settings (tiffin init's common/tiffin.nix) and the VM's parts.
      {...}: {
        imports = [${fleetTiffin} ${vmTest}];
      }
    '';
    inherit vmTestNix;
  }
