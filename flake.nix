{
  description = "tiffin: keep a fleet of NixOS machines up to date by pull, over per-host SFTP chroots";

  # flake.lock is written by `nix flake lock` (or any nix command) on first use.
  # nixos-26.05 ships rustc 1.95; Cargo.toml's rust-version (scripts/check-msrv) must not exceed it.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs = {
    self,
    nixpkgs,
  }: let
    inherit (nixpkgs) lib;
    systems = ["x86_64-linux" "aarch64-linux"];
    forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    packageFor = pkgs: self.packages.${pkgs.stdenv.hostPlatform.system}.default;
  in {
    packages = forAllSystems (pkgs: rec {
      # With its test suite in the check phase (checks.package too); the
      # modules install it without (doCheck = false).
      tiffin = pkgs.callPackage ./nix/package.nix {};
      default = tiffin;
    });

    # The modules are plain paths, so a system that imports one twice (the
    # default module beside .client, or a host configuration importing the
    # client module again) gets it once: the module system deduplicates an
    # imported file by its path. Each builds its package from the system's own
    # pkgs (not this flake's legacyPackages), without the test suite.
    nixosModules = {
      client = ./nix/modules/client.nix;
      server = ./nix/modules/server.nix;
      default = {
        imports = [./nix/modules/client.nix ./nix/modules/server.nix];
      };
    };

    checks = forAllSystems (pkgs: let
      tiffin = packageFor pkgs;
    in
      {
        package = tiffin;

        clippy = tiffin.overrideAttrs (old: {
          pname = "tiffin-clippy";
          nativeBuildInputs = old.nativeBuildInputs ++ [pkgs.clippy];
          buildPhase = ''
            runHook preBuild
            cargo clippy --offline --all-targets -- -D warnings
            runHook postBuild
          '';
          doCheck = false;
          # No cargoInstallHook: clippy builds nothing to install.
          dontCargoInstall = true;
          installPhase = "touch $out";
          dontFixup = true;
        });

        rustfmt =
          pkgs.runCommand "tiffin-rustfmt" {
            nativeBuildInputs = [pkgs.rustfmt];
          } ''
            cd ${tiffin.src}
            find src tests -name '*.rs' -print0 2>/dev/null \
              | xargs -0 rustfmt --check --edition 2024
            touch $out
          '';

        alejandra = pkgs.runCommand "tiffin-alejandra" {nativeBuildInputs = [pkgs.alejandra];} ''
          alejandra --check ${self}
          touch $out
        '';
      }
      # vm-<scenario>: one NixOS VM test per vm-scenarios/*.toml.
      // import ./nixos-tests {inherit pkgs self nixpkgs;});

    devShells = forAllSystems (pkgs: {
      default = pkgs.mkShell {
        inputsFrom = [(packageFor pkgs)];
        packages = [
          pkgs.clippy
          pkgs.rustfmt
          pkgs.rust-analyzer
          pkgs.alejandra
          pkgs.python3
        ];
      };
    });

    formatter = forAllSystems (pkgs: pkgs.alejandra);
  };
}
