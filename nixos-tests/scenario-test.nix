# One NixOS VM test from one lab scenario: a server VM with
# services.tiffin.server and a VM per client with services.tiffin.client,
# driven by the testScript lib/translate.nix writes from the scenario.
#
# Each client really runs `nixos-rebuild switch --flake` on what it pulled.
# The VMs are offline, so every system a client will switch to (one per
# configuration.nix text the scenario gives it) is built on the host and put
# into the client's store, and the flake it pulls pins the very nixpkgs and
# tiffin sources the test used (lib/vm-flake.nix): the rebuild inside the VM
# evaluates to the same store paths and finds them built.
{
  pkgs,
  self,
  nixpkgs,
}: {
  name,
  text,
}: let
  inherit (pkgs) lib;
  keys = import ./keys.nix;
  system = pkgs.stdenv.hostPlatform.system;

  translate = vmFiles:
    import ./lib/translate.nix {
      inherit name text keys vmFiles;
      templates = ../src/templates;
    };
  # What does not depend on the evaluated nodes (machines, server settings,
  # configurations); the testScript below passes the real files.
  scenario = translate (throw "nixos-tests: vmFiles are only known to the testScript");

  clientSystem = import ./lib/client-system.nix {inherit self;};
  vmFlake = import ./lib/vm-flake.nix {
    inherit nixpkgs;
    tiffin = self;
  };

  # The data a client's VM base needs, the same on the host and, through
  # hosts/<client>/tiffin-vm.json, in the VM; JSON both ways so they match.
  vmData = client: networkConfig:
    builtins.fromJSON (builtins.toJSON {
      nodeName = client;
      inherit system networkConfig;
      inherit (scenario) serverAddress;
      labAddress = scenario.labAddress client;
      serverPublicKey = keys.server.public;
    });

  # configuration.nix imports ./common, which in the VM is the fleet's
  # common/default.nix (written by `tiffin init` from src/templates/common.nix).
  # On the host the configuration is a lone file, so point it at that template.
  commonFile = builtins.toFile "common.nix" (builtins.readFile ../src/templates/common.nix);
  onHost = configuration:
    builtins.toFile "configuration.nix" (builtins.replaceStrings
      ["./common/default.nix" "./common]" "./common;" "./common " "./common\n" "./common)"]
      ["${commonFile}" "${commonFile}]" "${commonFile};" "${commonFile} " "${commonFile}\n" "${commonFile})"]
      configuration);

  # The systems a client will switch to. A configuration meant to fail (it
  # throws while evaluating, as the lab's rebuild stand-in expects) has none.
  targetSystems = client: networkConfig:
    lib.concatMap (configuration: let
      toplevel =
        (clientSystem {
          inherit nixpkgs;
          configuration = onHost configuration;
          vm = vmData client networkConfig;
        })
        .config
        .system
        .build
        .toplevel;
      evaluated = builtins.tryEval toplevel.drvPath;
    in
      lib.optional evaluated.success toplevel)
    scenario.configurations.${client};

  clientNode = client: {config, ...}: {
    imports = [
      self.nixosModules.client
      (import ./lib/vm-base.nix (vmData client null))
    ];
    virtualisation = {
      # Evaluating a NixOS system inside the VM needs room, as in nixpkgs' rebuild tests.
      memorySize = 3072;
      cores = 2;
      additionalPaths =
        ["${nixpkgs}" "${self}"]
        ++ targetSystems client config.system.build.networkConfig;
    };
  };
in
  import ./lib/run-test.nix {inherit pkgs;} {
    name = "tiffin-${name}";

    nodes =
      {
        server = {
          imports = [self.nixosModules.server];
          services.tiffin.server = {
            enable = true;
            inherit (scenario.server) chrootRoot userPrefix sshdExtra;
            hosts = lib.genAttrs scenario.clients (client: {publicKey = scenario.keys.${client}.public;});
          };
          networking.interfaces.eth1.ipv4.addresses = [
            {
              address = scenario.serverAddress;
              prefixLength = 24;
            }
          ];
          # As in the lab, the server's commands find the fleet through TIFFIN_FLEET.
          environment.variables.TIFFIN_FLEET = scenario.fleetDir;
          # sshd's log says why a denied access was denied.
          services.openssh.settings.LogLevel = "VERBOSE";
          # A fixed host key, so the clients can pin it at evaluation time.
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
          environment.etc."ssh/ssh_host_ed25519_key.pub" = {
            mode = "0644";
            text = keys.server.public + "\n";
          };
        };
      }
      // lib.genAttrs scenario.clients clientNode;

    testScript = {nodes, ...}:
      (translate {
        flakeNix = builtins.toFile "flake.nix" vmFlake.flakeNix;
        flakeLock = builtins.toFile "flake.lock" vmFlake.flakeLock;
        vmJson = client: builtins.toFile "tiffin-vm.json" (builtins.toJSON (vmData client nodes.${client}.system.build.networkConfig));
      })
      .testScript;
  }
