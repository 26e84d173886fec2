# What every client VM runs besides its fleet configuration, both as the
# test node and inside each system the client switches to (through the
# fleet's common/vm-test.nix): the lab's address, the server's key for
# OpenSSH's own clients, the held-back timer, and Nix without substituters
# (the VMs are offline). `vm` is the JSON-able data of
# nixos-tests/scenario-test.nix: { nodeName, system, serverAddress,
# labAddress, serverPublicKey, cachePublicKey (prebuilt scenarios), ... }.
vm: {
  lib,
  pkgs,
  config,
  ...
}: {
  # The tiffin client itself comes from the fleet (its flake template and
  # common/tiffin.nix, reading the fleet.toml the test writes: the server at
  # 192.0.2.1 and its fixed host key). The lab's addresses (192.0.2.0/24) are
  # on the test network as well, so the client talks to the server as in the
  # lab and scenario commands that name 192.0.2.1 work unchanged.
  networking.interfaces.eth1.ipv4.addresses = [
    {
      address = vm.labAddress;
      prefixLength = 24;
    }
  ];
  # The timer stays installed and enabled, as on a real host (a client checks
  # that the system it switches to still has both), but never fires: each
  # pull step starts the real unit itself, so no timer run races a step.
  services.tiffin.client.interval = lib.mkForce "2100-01-01";

  # The units tiffin restarts or reloads go through the real systemctl, and
  # each call is also recorded as the lab's systemctl stand-in records it
  # (vm-scenarios/bin/systemctl: "<action> <unit> <ok|failed>" in
  # /var/lib/fake-systemd/calls.log, and a unit listed in
  # /var/lib/fake-systemd/failing fails), so scenarios read the same record on both.
  services.tiffin.client.settings.systemctl = [
    "${pkgs.writeShellScript "tiffin-vm-systemctl" ''
      mkdir -p /var/lib/fake-systemd
      # A unit listed in `failing` fails without being touched, as with the lab's stand-in.
      if [ -f /var/lib/fake-systemd/failing ] && grep -qxF -- "$2" /var/lib/fake-systemd/failing; then
        result=failed
        echo "Job for $2 failed because the control process exited with error code." >&2
      elif ${config.systemd.package}/bin/systemctl "$@"; then result=ok; else result=failed; fi
      printf '%s %s %s\n' "$1" "$2" "$result" >>/var/lib/fake-systemd/calls.log
      [ "$result" = ok ]
    ''}"
  ];
  # A prebuilt scenario's clients import only closures signed with the
  # fleet's TEST key (nixos-tests/keys.nix), in the test node as in each
  # fleet system they switch to: /etc/tiffin/client.toml keeps
  # cache_public_key across the switches.
  services.tiffin.client.cachePublicKey = lib.mkIf ((vm.cachePublicKey or null) != null) vm.cachePublicKey;
  # A prebuilt client never runs nixos-rebuild; each call would be recorded
  # in /var/lib/tiffin-vm/rebuild-calls.log, which the scenarios check is
  # absent (the lab's stand-in records in /var/lib/fake-nix/calls.log).
  services.tiffin.client.settings.rebuild = lib.mkIf ((vm.cachePublicKey or null) != null) [
    "${pkgs.writeShellScript "tiffin-vm-nixos-rebuild" ''
      mkdir -p /var/lib/tiffin-vm
      printf '%s\n' "$*" >>/var/lib/tiffin-vm/rebuild-calls.log
      exec nixos-rebuild "$@"
    ''}"
    "{action}"
    "--flake"
    "{config}#{host}"
  ];

  # The watcher is installed as on a host with watch mode, but not started at
  # boot: the watch_start and watch_stop steps start and stop it; unless the
  # scenario's [lab.client_module] turns watch mode on, as on a real host.
  services.tiffin.client.watch.enable = true;
  systemd.services.tiffin-watch.wantedBy = lib.mkIf (!((vm.clientModule.watch or {}).enable or false)) (lib.mkForce []);

  # A scenario's [lab.client_module] (its units' options, e.g. a short timer
  # interval), above the VM's own settings here (whose interval is mkForce'd).
  imports = [{services.tiffin.client = lib.mapAttrsRecursive (_: lib.mkOverride 40) (vm.clientModule or {});}];

  # /etc/ssh/ssh_known_hosts, as the lab writes it: for the expect_denied
  # steps and scenario commands, which use OpenSSH's own ssh and sftp.
  programs.ssh.knownHosts.tiffin-server = {
    hostNames = [vm.serverAddress "server"];
    publicKey = vm.serverPublicKey;
  };

  # Offline, as in nixpkgs' nixos/tests/nixos-rebuild/common.nix: every path a
  # rebuild needs is pre-built into the VM's store.
  nix.settings = {
    substituters = lib.mkForce [];
    hashed-mirrors = null;
    connect-timeout = 1;
    flake-registry = "";
  };

  # The VMs boot their kernel directly (qemu-vm.nix); there is no boot loader
  # for `switch` to install.
  boot.loader.grub.enable = false;
  system.switch.enable = true;

  # Constant, like nixos/lib/testing/nixos-test-base.nix does for the nodes,
  # so the system a client builds from its flake equals the pre-built one.
  documentation.nixos.enable = false;
  system.nixos = {
    revision = lib.mkForce "constant-nixos-revision";
    versionSuffix = lib.mkForce "test";
    label = lib.mkForce "test";
  };
}
