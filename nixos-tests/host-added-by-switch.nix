# A host added to services.tiffin.server by switching the server (no reboot)
# can report: its reports/ tmpfs, a new mount unit started by
# switch-to-configuration after tmpfiles ran, is owned by its account from the
# moment it is mounted (X-mount.owner), so the host's first pull uploads its
# report. The docs' way to add a host (docs/nixos.md) is exactly this switch.
#
# Not a translated lab scenario: the lab provisions with `tiffin provision`,
# and what this checks is the NixOS module's mounts under a real switch.
{
  pkgs,
  self,
}: let
  keys = import ./keys.nix;
  serverAddress = "192.0.2.1";
  fleet = "/srv/fleet";
in
  import ./lib/run-test.nix {inherit pkgs;} {
    name = "tiffin-host-added-by-switch";

    nodes = {
      server = {
        imports = [self.nixosModules.server];
        services.tiffin.server.enable = true;
        # Booted with no host; the specialisation adds client1, as an admin's
        # `nixos-rebuild switch` would.
        specialisation.with-client1.configuration = {
          services.tiffin.server.hosts.client1.publicKey = keys.client1.public;
        };
        networking.interfaces.eth1.ipv4.addresses = [
          {
            address = serverAddress;
            prefixLength = 24;
          }
        ];
        environment.variables.TIFFIN_FLEET = fleet;
        services.openssh.hostKeys = [
          {
            type = "ed25519";
            path = "/etc/ssh/ssh_host_ed25519_key";
          }
        ];
        environment.etc."ssh/ssh_host_ed25519_key" = {
          mode = "0600";
          text = keys.server.private;
        };
      };

      client1 = {
        imports = [self.nixosModules.client];
        networking.interfaces.eth1.ipv4.addresses = [
          {
            address = "192.0.2.11";
            prefixLength = 24;
          }
        ];
        services.tiffin.client = {
          enable = true;
          host = "client1";
          server = serverAddress;
          serverPublicKey = keys.server.public;
          # Never fires by itself: the test starts the unit.
          interval = "2100-01-01";
          # What the rebuild does is not the point here; that the report
          # reaches the server is.
          settings.rebuild = ["${pkgs.coreutils}/bin/true"];
        };
        environment.etc."tiffin/id_ed25519" = {
          mode = "0600";
          text = keys.client1.private;
        };
      };
    };

    testScript = ''
      start_all()
      server.wait_for_unit("sshd.service")

      with subtest("the server boots without client1: no account, no reports mount"):
          server.fail("id tiffin-client1")
          server.fail("mountpoint -q /var/lib/tiffin/chroots/client1/reports")

      with subtest("a switch adds client1: its reports/ is its own at once, no reboot"):
          server.succeed("/run/current-system/specialisation/with-client1/bin/switch-to-configuration test")
          server.succeed("mountpoint -q /var/lib/tiffin/chroots/client1/reports")
          owner = server.succeed("stat -c '%U:%G %a' /var/lib/tiffin/chroots/client1/reports").strip()
          assert owner == "tiffin-client1:tiffin-client1 700", owner

      with subtest("a release is published for client1"):
          server.succeed(
              "tiffin init ${fleet}",
              "rm -r ${fleet}/hosts/example",
              "tiffin host add client1 --key '${keys.client1.public}'",
              "sed -i 's|^#* *address = .*|address = \"${serverAddress}\"|' ${fleet}/fleet.toml",
              "tiffin publish client1",
          )

      with subtest("client1 pulls and its report reaches the server"):
          client1.wait_for_unit("network-online.target")
          # The rebuild stand-in may or may not pass tiffin's checks; either way
          # the report is uploaded, which is what a root-owned reports/ refused.
          client1.execute("systemctl start tiffin-pull.service")
          server.wait_until_succeeds("test -s /var/lib/tiffin/chroots/client1/reports/status.toml", timeout=60)
          server.succeed("grep -q '^host = \"client1\"' /var/lib/tiffin/chroots/client1/reports/status.toml")
          server.succeed("tiffin status client1 | grep -q client1")
    '';
  }
