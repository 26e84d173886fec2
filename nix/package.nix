# tiffin, built from this repository with nixpkgs' Rust tooling.
#
# `doCheck` runs the test suite in the check phase (`nix build .#tiffin`,
# `checks.package`). The NixOS modules install the package with
# `doCheck = false`: a host must not compile and run the whole suite during
# its rebuild, where one slow or flaky test would block its update.
# scripts/package-check rehearses this check phase outside Nix (source set,
# PATH, user, network and flags as the sandbox has them).
{
  lib,
  rustPlatform,
  openssh,
  prometheus,
  doCheck ? true,
}: let
  root = ../.;
  cargoToml = lib.importTOML (root + "/Cargo.toml");
  # Only what the build and its tests read, so editing other docs or Nix files
  # does not rebuild the package. docs/operations.md: a test checks the alert
  # rules it documents with promtool.
  fileset = lib.fileset.unions ([
      (root + "/Cargo.toml")
      (root + "/Cargo.lock")
      (root + "/src")
      (root + "/docs/operations.md")
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
in
  rustPlatform.buildRustPackage {
    pname = "tiffin";
    inherit (cargoToml.package) version;

    src = lib.fileset.toSource {inherit root fileset;};

    cargoLock.lockFile = root + "/Cargo.lock";

    inherit doCheck;

    # ssh-keygen, sftp and sshd for the tests that run OpenSSH unprivileged;
    # promtool (prometheus' cli output) for the metrics and alert-rule tests.
    nativeCheckInputs = [openssh (lib.getOutput "cli" prometheus)];

    env.INSTA_UPDATE = "no";

    # Tests that need root (namespaces, useradd, a real sshd) are #[ignore]d,
    # so `cargo test` leaves them out in the sandbox, which is never root. The
    # skips below are belt and braces for builders that run as root
    # (single-user Nix in a container): those tests must not create accounts
    # and namespaces on a builder. CI runs them all (.ci/run).
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
