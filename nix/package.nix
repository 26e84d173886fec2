# tiffin, built from this repository with nixpkgs' Rust tooling.
{
  lib,
  rustPlatform,
  openssh,
}: let
  root = ../.;
  cargoToml = lib.importTOML (root + "/Cargo.toml");
in
  rustPlatform.buildRustPackage {
    pname = "tiffin";
    inherit (cargoToml.package) version;

    # Only what the build and its tests read, so editing docs or Nix files
    # does not rebuild the package.
    src = lib.fileset.toSource {
      inherit root;
      fileset = lib.fileset.unions ([
          (root + "/Cargo.toml")
          (root + "/Cargo.lock")
          (root + "/src")
        ]
        ++ builtins.filter lib.pathExists [
          (root + "/tests")
          (root + "/benches")
          (root + "/vm-scenarios")
          (root + "/rustfmt.toml")
          (root + "/.rustfmt.toml")
          (root + "/clippy.toml")
          (root + "/.clippy.toml")
        ]);
    };

    cargoLock.lockFile = root + "/Cargo.lock";

    # ssh-keygen, sftp and sshd for the tests that run OpenSSH unprivileged.
    nativeCheckInputs = [openssh];

    env.INSTA_UPDATE = "no";

    # Tests that need root, network namespaces or mount namespaces cannot run
    # in the Nix build sandbox (an unprivileged build user, no /etc to
    # overlay); CI runs them on a real machine (.ci/run). Each skip says why.
    checkFlags = [
      # tiffin-lab: every machine is a network + mount namespace (root).
      "--skip=lab::"
      # tiffin provision: useradd and sshd inside a private mount namespace (root).
      "--skip=provision::root"
      # tiffin pull end to end against a real sshd in a network namespace (root).
      "--skip=pull::lab"
    ];

    meta = {
      description = cargoToml.package.description;
      license = with lib.licenses; [mit asl20];
      mainProgram = "tiffin";
      platforms = lib.platforms.linux;
      maintainers = [];
    };
  }
