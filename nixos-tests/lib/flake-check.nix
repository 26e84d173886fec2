# flake.nix's outputs with a stand-in nixpkgs (nixpkgs' real lib, packages
# and builders as plain attribute sets): which outputs exist, one vm-<scenario>
# check per vm-scenarios/*.toml, the modules' package defaults. Run by
# static-check when NIXPKGS_LIB is set.
{nixpkgsLib}: let
  lib = import nixpkgsLib;
  fakePath = n: "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" n)}-${n}";
  drv = name: attrs:
    attrs
    // {
      type = "derivation";
      inherit name;
      outPath = fakePath name;
      drvPath = fakePath "${name}.drv";
      overrideAttrs = f: drv "${name}-overridden" (attrs // f attrs);
    };
  pkgsFor = system: rec {
    inherit lib;
    stdenv.hostPlatform.system = system;
    callPackage = f: args: let
      fn = import f;
    in
      fn (builtins.intersectAttrs (builtins.functionArgs fn) (pkgsFor system) // args);
    rustPlatform.buildRustPackage = a: drv "${a.pname}-${a.version}" (a // {nativeBuildInputs = [];});
    openssh = drv "openssh" {};
    prometheus = drv "prometheus" {cli = drv "prometheus-cli" {};};
    clippy = drv "clippy" {};
    rustfmt = drv "rustfmt" {};
    alejandra = drv "alejandra" {};
    rust-analyzer = drv "rust-analyzer" {};
    python3 = drv "python3" {};
    runCommand = name: env: script: drv name {inherit env script;};
    mkShell = a: drv "shell" a;
    testers.runNixOSTest = module: drv "nixos-test" {inherit module;};
  };
  systems = ["x86_64-linux" "aarch64-linux"];
  nixpkgs = {
    outPath = fakePath "nixpkgs-source";
    narHash = "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    inherit lib;
    legacyPackages = lib.genAttrs systems pkgsFor;
  };
  flake = import ../../flake.nix;
  self =
    flake.outputs {inherit self nixpkgs;}
    // {
      outPath = ../..;
      narHash = "sha256-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=";
    };
in {
  inherit (flake) description;
  outputs = builtins.attrNames self;
  packages = lib.mapAttrs (_: builtins.attrNames) self.packages;
  checks = lib.mapAttrs (_: builtins.attrNames) self.checks;
  vmTestNames = lib.mapAttrs (_: checks: lib.mapAttrsToList (_: t: (builtins.head (t.module or t.test.module).imports).name) (lib.filterAttrs (n: _: lib.hasPrefix "vm-" n) checks)) self.checks;
  # Scenarios whose VM test does not evaluate (each check then fails naming it).
  brokenVmTests = lib.mapAttrs (_: checks: lib.attrNames (lib.filterAttrs (n: c: lib.hasPrefix "vm-" n && c ? test) checks)) self.checks;
  nixosModules = builtins.attrNames self.nixosModules;
  # The package each module installs by default (built from the system's pkgs,
  # without its test suite), and the flake's own package (with it).
  modulePackages = lib.genAttrs systems (system: let
    stubs = import ./nixos-stubs.nix {inherit lib;};
    config =
      (lib.evalModules {
        modules = [
          stubs.stubs
          self.nixosModules.default
          {_module.args.pkgs = pkgsFor system;}
        ];
      })
      .config;
    describe = p: {
      inherit (p) name;
      doCheck = p.doCheck or true;
    };
  in {
    client = describe config.services.tiffin.client.package;
    server = describe config.services.tiffin.server.package;
    flake = describe self.packages.${system}.tiffin;
  });
  # A system importing the default module and .client, and a host
  # configuration importing the client module again (as docs/nixos.md's
  # standalone example does inside a fleet flake): each module file counts once.
  doubleImport = let
    stubs = import ./nixos-stubs.nix {inherit lib;};
    config =
      (lib.evalModules {
        modules = [
          stubs.stubs
          {_module.args.pkgs = pkgsFor "x86_64-linux";}
          self.nixosModules.default
          self.nixosModules.client
          {
            imports = [self.nixosModules.client];
            services.tiffin.client = {
              enable = true;
              server = "tiffin.example.org";
              serverPublicKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMGQC1aCaZX2zZqN9X6F3k//2aO41CBiBRm3y87h9W3Q";
            };
          }
        ];
      })
      .config;
  in {
    package = config.services.tiffin.client.package.name;
    units = builtins.attrNames config.systemd.services;
    execStart = config.systemd.services.tiffin-pull.serviceConfig.ExecStart;
  };
  # The hand-written VM tests' scripts (a string, not a scenario's function),
  # for static-check to compile.
  standaloneScripts = lib.mapAttrs (_: t: (builtins.head t.module.imports).testScript) (lib.filterAttrs (n: t: lib.hasPrefix "vm-" n && t ? module && builtins.isString (builtins.head t.module.imports).testScript) self.checks.x86_64-linux);
  formatter = lib.mapAttrs (_: f: f.name) self.formatter;
  devShells = lib.mapAttrs (_: builtins.attrNames) self.devShells;
  mainProgram = self.packages.x86_64-linux.default.meta.mainProgram;
}
