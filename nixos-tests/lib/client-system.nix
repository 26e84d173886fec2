# A client VM's system as `nixos-rebuild --flake` builds it inside the VM (see
# lib/vm-flake.nix) and as the test pre-builds it on the host: the same
# function with the same arguments, so both give the same store paths and the
# offline VM finds its system already built.
#
# nixpkgs: the flake input; configuration: the host's configuration.nix;
# vm: the data of nixos-tests/scenario-test.nix, from JSON.
{self}: {
  nixpkgs,
  configuration,
  vm,
}:
nixpkgs.lib.nixosSystem {
  modules = [
    configuration
    # What the test framework gives every node (nixos/lib/testing/nixos-test-base.nix),
    # and the node's network (system.build.networkConfig), as nixpkgs'
    # nixos/tests/nixos-rebuild/target-host.nix rebuilds a test node.
    "${nixpkgs}/nixos/modules/virtualisation/qemu-vm.nix"
    "${nixpkgs}/nixos/modules/testing/test-instrumentation.nix"
    vm.networkConfig
    self.nixosModules.client
    (import ./vm-base.nix vm)
    # The fleet template names a platform; the VM's is the test's.
    # (test-instrumentation.nix gives system.stateVersion a default.)
    ({lib, ...}: {nixpkgs.hostPlatform = lib.mkForce vm.system;})
  ];
}
