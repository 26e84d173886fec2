# One NixOS VM test from one lab scenario: a server VM with
# services.tiffin.server and a VM per client, driven by the testScript
# lib/translate.nix writes from the scenario.
#
# The fleet on the server is the one `tiffin init` and `tiffin host add`
# make, as a user's is: each host's system comes from the fleet's own flake
# template, which brings tiffin's client module and common/tiffin.nix
# (configured from fleet.toml). Only the template's input URLs change, and
# common/tiffin.nix gains the VM's own parts (lib/vm-flake.nix).
#
# Each client really runs `nixos-rebuild switch --flake` on what it pulled.
# The VMs are offline, so every system a client will switch to (one per
# configuration.nix text the scenario gives it) is built on the host and put
# into the client's store, and the flake it pulls pins the very nixpkgs and
# tiffin sources the test used: the rebuild inside the VM evaluates to the
# same store paths and finds them built. An early step checks exactly that.
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
  templates = ../src/admin/templates;

  translate = vmFiles:
    import ./lib/translate.nix {
      inherit name text keys vmFiles templates;
    };
  # What does not depend on the evaluated nodes (machines, server settings,
  # configurations); the testScript below passes the real files.
  scenario = translate (throw "nixos-tests: vmFiles are only known to the testScript");

  vmFlake = import ./lib/vm-flake.nix {
    inherit nixpkgs templates;
    tiffin = self;
  };

  # The data a client's VM parts need, the same on the host and, through
  # hosts/<client>/tiffin-vm.json, in the VM; JSON both ways so they match.
  vmData = client: networkConfig:
    builtins.fromJSON (builtins.toJSON ({
        nodeName = client;
        inherit system networkConfig;
        inherit (scenario) serverAddress;
        labAddress = scenario.labAddress client;
        serverPublicKey = keys.server.public;
        inherit (scenario) clientModule;
      }
      # A prebuilt scenario's clients trust the fleet's test key, in the test
      # node and in every fleet system (lib/vm-base.nix).
      // lib.optionalAttrs scenario.prebuilt {cachePublicKey = keys.cache.fleet.public;}));
  vmJsonFile = client: networkConfig: builtins.toFile "tiffin-vm.json" (builtins.toJSON (vmData client networkConfig));

  # The fleet's files as the host evaluates them: a release's config/ is a
  # directory, but here each file is a lone store file, so the relative paths
  # between them are replaced by the store paths of the files they name (the
  # early VM step proves the result equals what the VM evaluates from the
  # real directory).
  fleetTomlFile = builtins.toFile "fleet.toml" (builtins.readFile scenario.fleetToml);
  fleetTiffin = builtins.toFile "fleet-tiffin.nix" (builtins.replaceStrings ["./fleet.toml"] ["${fleetTomlFile}"] (builtins.readFile (templates + "/tiffin.nix")));
  common = builtins.toFile "common.nix" (builtins.readFile (templates + "/common.nix"));
  vmTestOnHost = client: networkConfig: builtins.toFile "vm-test.nix" (vmFlake.vmTestNix "${vmJsonFile client networkConfig}");
  tiffinOnHost = client: networkConfig: builtins.toFile "tiffin.nix" (vmFlake.tiffinWrapper "${fleetTiffin}" "${vmTestOnHost client networkConfig}");
  onHost = configuration:
    builtins.toFile "configuration.nix" (builtins.replaceStrings
      ["./common/default.nix" "./common]" "./common;" "./common " "./common\n" "./common)"]
      ["${common}" "${common}]" "${common};" "${common} " "${common}\n" "${common})"]
      configuration);
  # The fleet's flake, as the VM's templates/flake.nix, with the host's files.
  flakeOnHost = client: networkConfig: configuration:
    import (builtins.toFile "flake.nix" (builtins.replaceStrings
      ["./configuration.nix" "./common/tiffin.nix"]
      ["${onHost configuration}" "${tiffinOnHost client networkConfig}"]
      vmFlake.flakeNix));

  # The system a client's fleet flake gives for one configuration.nix text.
  fleetSystem = client: networkConfig: configuration: let
    outputs = (flakeOnHost client networkConfig configuration).outputs {
      inherit nixpkgs;
      tiffin = self;
    };
  in
    outputs.nixosConfigurations.${client}
    or (throw "nixos-tests: ${name}: the fleet flake of ${client} has no nixosConfigurations.${client} (networking.hostName must be the host's name)");

  # The systems a client will switch to. A configuration meant to fail (it
  # throws while evaluating, as the lab's rebuild stand-in expects) has none.
  targetSystems = client: networkConfig:
    lib.concatMap (configuration: let
      toplevel = (fleetSystem client networkConfig configuration).config.system.build.toplevel;
      evaluated = builtins.tryEval toplevel.drvPath;
    in
      lib.optional evaluated.success toplevel)
    scenario.configurations.${client};

  # The host's release config/ as a real directory (the files `tiffin init`,
  # `host add` and the test write, links dereferenced), for the early step
  # that evaluates it in the VM. Built, never read while evaluating.
  configTree = client: networkConfig: configuration: let
    file = n: t: builtins.toFile n t;
  in
    pkgs.runCommand "tiffin-vm-${client}-config" {} ''
      mkdir -p $out/common
      cp ${file "flake.nix" vmFlake.flakeNix} $out/flake.nix
      cp ${file "flake.lock" vmFlake.flakeLock} $out/flake.lock
      cp ${file "configuration.nix" configuration} $out/configuration.nix
      cp ${vmJsonFile client networkConfig} $out/tiffin-vm.json
      cp ${templates + "/common.nix"} $out/common/default.nix
      cp ${templates + "/tiffin.nix"} $out/common/fleet-tiffin.nix
      cp ${fleetTomlFile} $out/common/fleet.toml
      cp ${file "tiffin.nix" (vmFlake.tiffinWrapper "./fleet-tiffin.nix" "./vm-test.nix")} $out/common/tiffin.nix
      cp ${file "vm-test.nix" (vmFlake.vmTestNix "../tiffin-vm.json")} $out/common/vm-test.nix
    '';
  # The first configuration of a client that evaluates, its tree and its system.
  evalCheck = client: networkConfig: let
    evaluates = configuration: (builtins.tryEval (fleetSystem client networkConfig configuration).config.system.build.toplevel.drvPath).success;
    first = lib.findFirst evaluates null scenario.configurations.${client};
  in
    if first == null
    then null
    else {
      tree = configTree client networkConfig first;
      toplevel = (fleetSystem client networkConfig first).config.system.build.toplevel;
    };

  # What a VM needs in its store to evaluate (and find built) a client's
  # systems offline: the client's own VM in a rebuild scenario, the server VM
  # (for all clients) in a prebuilt one.
  systemPaths = client: networkConfig: let
    check = evalCheck client networkConfig;
  in
    targetSystems client networkConfig
    ++ lib.optional (check != null) check.tree;
  sources = ["${nixpkgs}" "${self}"];

  # Offline, as lib/vm-base.nix makes the clients: the server VM's build
  # evaluates the fleet's flake with only what its store holds.
  offlineNix = {
    substituters = lib.mkForce [];
    hashed-mirrors = null;
    connect-timeout = 1;
    flake-registry = "";
  };

  # A prebuilt scenario's server: it builds ([apply] build = "server", set
  # by the scenario's first step) and signs with a TEST key. Both test key
  # pairs (nixos-tests/keys.nix) are in /etc/tiffin-test/, where the first
  # step copies one to the signingKeyFile, as the lab's prebuilt-fleet does.
  prebuiltServer = {
    services.tiffin.server.build = {
      enable = true;
      signingKeyFile = "/var/lib/tiffin/signing-key";
    };
    nix.settings = offlineNix;
    environment.etc = lib.mapAttrs' (n: k:
      lib.nameValuePair "tiffin-test/signing-key-${n}" {
        mode = "0600";
        text = k.secret;
      })
    keys.cache;
  };

  clientNode = client: {config, ...}: {
    imports = [
      # The test node runs the client as the fleet configures it.
      self.nixosModules.client
      fleetTiffin
      (import ./lib/vm-base.nix (vmData client null))
    ];
    virtualisation = {
      # Evaluating a NixOS system inside the VM needs room, as in nixpkgs' rebuild tests;
      # a prebuilt client evaluates nothing, but its imported paths land in the
      # store's tmpfs (half of the memory).
      memorySize =
        if scenario.prebuilt
        then 2048
        else 3072;
      cores = 2;
      # A prebuilt client gets nothing: it downloads its closure from its release.
      additionalPaths = lib.optionals (!scenario.prebuilt) (sources ++ systemPaths client config.system.build.networkConfig);
    };
  };
in
  import ./lib/run-test.nix {inherit pkgs;} {
    name = "tiffin-${name}";

    nodes =
      {
        server = {nodes, ...}: {
          imports =
            [
              self.nixosModules.server
              # The scenario's [lab.server_module] (e.g. the metrics timer's interval).
              {services.tiffin.server = lib.mapAttrsRecursive (_: lib.mkOverride 40) scenario.serverModule;}
            ]
            ++ lib.optional scenario.prebuilt prebuiltServer;
          # A prebuilt server evaluates every client's NixOS system (publish
          # runs two builds at a time) and holds what each build finds built;
          # its cache pool and the chroots hold whole closures (xz).
          virtualisation = lib.optionalAttrs scenario.prebuilt {
            memorySize = 4096;
            cores = 2;
            diskSize = 8192;
            additionalPaths = sources ++ lib.concatMap (client: systemPaths client nodes.${client}.system.build.networkConfig) scenario.clients;
          };
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
          # The fleet's metrics through node_exporter (port 9100), as an operator
          # enables them; vm-scenarios/metrics-node-exporter.toml reads them.
          services.tiffin.server.metrics = {
            enable = true;
            fleet = scenario.fleetDir;
          };
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
        tiffinWrapper = builtins.toFile "tiffin.nix" (vmFlake.tiffinWrapper "./fleet-tiffin.nix" "./vm-test.nix");
        vmTestNix = builtins.toFile "vm-test.nix" (vmFlake.vmTestNix "../tiffin-vm.json");
        vmJson = client: vmJsonFile client nodes.${client}.system.build.networkConfig;
        evalCheck = client: evalCheck client nodes.${client}.system.build.networkConfig;
      })
      .testScript;
  }
