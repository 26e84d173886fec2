# The wiring of one scenario's VM test (nixos-tests/scenario-test.nix) with
# stand-ins for nixpkgs, the flake and the test framework: the nodes, the
# testScript from the evaluated nodes, and the systems each client gets
# pre-built. nixpkgs' lib is real (NIXPKGS_LIB); `lib.nixosSystem` is a
# stand-in that only imports the host's configuration.nix and what it
# imports, so a configuration meant to fail (it throws) shows up as not
# pre-built; the modules it gets are the fleet flake's (configuration.nix,
# tiffin's client module, common/tiffin.nix), as the host rewrites them. Run
# by static-check with --read-write-mode (it imports files it writes to the
# store).
{
  nixpkgsLib,
  file,
  name,
}: let
  lib = import nixpkgsLib;
  system = "x86_64-linux";
  fakePath = n: "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" n)}-${n}";

  # Imports a module and everything it imports, calling module functions with
  # stand-in arguments; returns the list of evaluated modules. nixpkgs' own
  # modules (under the stand-in modulesPath) are left out.
  modulesPath = "/nixpkgs-stand-in/nixos/modules";
  importModule = m:
    if (builtins.isString m || builtins.isPath m) && lib.hasPrefix modulesPath (toString m)
    then []
    else importModule' m;
  importModule' = m: let
    value =
      if builtins.isPath m || builtins.isString m
      then import m
      else m;
    r =
      if builtins.isFunction value
      then
        value {
          config = {};
          options = {};
          pkgs = {};
          inherit lib modulesPath;
        }
      else value;
  in
    [r] ++ builtins.concatMap importModule (r.imports or []);

  nixpkgs = {
    outPath = fakePath "nixpkgs-source";
    narHash = "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    lib =
      lib
      // {
        nixosSystem = {modules}: let
          host = builtins.concatMap importModule modules;
          named = lib.filter (m: m ? networking && m.networking ? hostName) host;
        in {
          config.networking.hostName =
            if named == []
            then throw "wiring-check: no module of the system sets networking.hostName"
            else (builtins.head named).networking.hostName;
          config.system.build.toplevel = {
            type = "derivation";
            # Which host's system it is, for a prebuilt server holding every client's.
            hostName = (builtins.head named).networking.hostName;
            name = "nixos-system";
            outPath = fakePath "nixos-system";
            # Forces the configuration, as a real evaluation would.
            drvPath = builtins.seq (map builtins.attrNames host) (fakePath "nixos-system.drv");
            inherit modules;
          };
        };
      };
  };
  self = {
    outPath = fakePath "tiffin-source";
    narHash = "sha256-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=";
    nixosModules = {
      client = {};
      server = {};
    };
  };
  pkgs = {
    inherit lib;
    stdenv.hostPlatform.system = system;
    testers.runNixOSTest = module: module;
    runCommand = name: env: script: {
      type = "derivation";
      inherit name script;
      outPath = fakePath name;
    };
  };

  test =
    builtins.head
    (import ../scenario-test.nix {inherit pkgs self nixpkgs;} {
      inherit name;
      text = builtins.readFile file;
    })
    .imports;
  clients = lib.filter (n: n != "server") (lib.attrNames test.nodes);
  # What the framework's network module would give each node.
  nodes = lib.genAttrs (lib.attrNames test.nodes) (n: {
    system.build.networkConfig = {
      networking.hostName = lib.mkDefault n;
      networking.primaryIPAddress = "192.168.1.${toString (1 + lib.lists.findFirstIndex (x: x == n) 0 (lib.attrNames test.nodes))}";
    };
  });
  clientNode = c: test.nodes.${c} {config = nodes.${c};};
  serverNode = test.nodes.server {
    config = nodes.server;
    inherit nodes;
  };
  serverPaths = serverNode.virtualisation.additionalPaths or [];
  prebuilt = serverPaths != [];
in {
  machines = lib.attrNames test.nodes;
  inherit prebuilt;
  testScript = test.testScript {inherit nodes;};
  server = {
    inherit (serverNode.services.tiffin.server) chrootRoot userPrefix sshdExtra;
    hosts = lib.attrNames serverNode.services.tiffin.server.hosts;
    addresses = serverNode.networking.interfaces.eth1.ipv4.addresses;
    fleet = serverNode.environment.variables.TIFFIN_FLEET;
    # A prebuilt server builds: the module's build option and its modules (lib.optional).
    importCount = builtins.length serverNode.imports;
  };
  # Per client: how many paths it gets (nixpkgs, tiffin, one per pre-built
  # system, the config tree the early step evaluates) and the modules of each
  # pre-built system: the fleet flake's configuration.nix, tiffin's client
  # module and common/tiffin.nix, as files the host rewrote. In a prebuilt
  # scenario the server VM holds them (the client's own paths are empty),
  # each client's systems picked from the server's by their host name.
  clients = lib.genAttrs clients (c: let
    node = clientNode c;
    ownPaths = node.virtualisation.additionalPaths;
    mine = p: (p.hostName or null) == c || p.name == "tiffin-vm-${c}-config";
    paths =
      if prebuilt
      then lib.take 2 serverPaths ++ builtins.filter mine (lib.drop 2 serverPaths)
      else ownPaths;
    rest = lib.drop 2 paths;
  in {
    ownPathCount = builtins.length ownPaths;
    pathCount = builtins.length paths;
    sources = lib.take 2 paths;
    systems = map (p: {
      moduleCount = builtins.length p.modules;
      configuration = builtins.readFile (builtins.elemAt p.modules 0);
      clientModule = builtins.elemAt p.modules 1 == self.nixosModules.client;
      tiffinNix = builtins.readFile (builtins.elemAt p.modules 2);
    }) (builtins.filter (p: p.name == "nixos-system") rest);
    trees = map (p: p.outPath) (builtins.filter (p: p.name == "tiffin-vm-${c}-config") rest);
    treeScript = (lib.findFirst (p: p.name == "tiffin-vm-${c}-config") {script = "";} rest).script;
    imports = builtins.length node.imports;
  });
}
