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

    # Tests that need root (namespaces, useradd, a real sshd) skip themselves
    # when not root, which a sandboxed build never is. Builders that run as
    # root (single-user Nix in a container) must not run them either: they
    # would create accounts and namespaces on the builder. CI runs them
    # (.ci/run). Keep this list in step with tests/cli/.
    checkFlags = [
      # provision: useradd + the real sshd inside private mount/network namespaces.
      "--skip=provision::real_sshd_serves_provisioned_hosts_in_isolation"
      # provision: needs a root-owned fake server tree, as sshd demands.
      "--skip=provision::dry_run_plan_for_three_hosts_on_an_empty_server"
      # pull: the real sshd provisioned inside private mount/network namespaces.
      "--skip=pull::real_sshd_pull_end_to_end"
      # tiffin-lab: every machine is a network + mount namespace.
      "--skip=lab::"
    ];

    meta = {
      description = cargoToml.package.description;
      license = with lib.licenses; [mit asl20];
      mainProgram = "tiffin";
      platforms = lib.platforms.linux;
      maintainers = [];
    };
  }
