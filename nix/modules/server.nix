# services.tiffin.server: OpenSSH serving each fleet host its own SFTP chroot,
# declaratively: what `tiffin provision` does on other distributions
# (accounts, chroot directories, keys, sshd Match blocks). Publishing stays an
# explicit admin action: `tiffin publish` in the fleet repository.
{
  config,
  lib,
  pkgs,
  ...
}: let
  cfg = config.services.tiffin.server;

  account = host: cfg.userPrefix + host;
  chroot = host: "${cfg.chrootRoot}/${host}";
  keysFile = host: "${cfg.authorizedKeysDir}/${account host}";
  hostNames = lib.attrNames cfg.hosts;

  # The same Match blocks `tiffin provision` writes into its drop-in.
  matchBlocks = import ../lib/sshd-match.nix {
    hosts =
      map (host: {
        account = account host;
        chroot = chroot host;
        keysFile = keysFile host;
      })
      hostNames;
    extra = cfg.sshdExtra;
  };

  # nixpkgs' sshd module writes services.openssh.extraConfig into sshd_config
  # through an unquoted shell here-document (`cat … - >$out <<EOL`, in
  # nixos/modules/services/networking/ssh/sshd.nix), so the build's shell
  # expands `$`, backticks and `\` in it, and a line `EOL` ends it early.
  # Refused rather than escaped: the text must reach sshd_config as written.
  shellExpanded = s: builtins.match ".*[$`\\].*" s != null;
  endsHeredoc = s: builtins.match "[[:space:]]*EOL[[:space:]]*" s != null;
in {
  imports = [./server-metrics.nix ./server-rollout.nix];

  meta.maintainers = [];

  options.services.tiffin.server = {
    enable = lib.mkEnableOption "serving a tiffin fleet over OpenSSH: one system account and SFTP chroot per host";

    package = lib.mkOption {
      type = lib.types.package;
      # Without its test suite: see nix/package.nix.
      default = pkgs.callPackage ../package.nix {doCheck = false;};
      defaultText = lib.literalMD "tiffin, built from this flake with the system's nixpkgs (without running its tests)";
      description = "The tiffin package the server runs.";
    };

    chrootRoot = lib.mkOption {
      type = lib.types.strMatching "/.+[^/]";
      default = "/var/lib/tiffin/chroots";
      description = ''
        Directory holding one chroot per host, `<chrootRoot>/<host>`. Must
        equal `server.chroot_root` in the fleet's `fleet.toml`, where
        `tiffin publish` writes. Every directory on the way must belong to
        root and not be writable by group or others: sshd checks each one.
      '';
    };

    userPrefix = lib.mkOption {
      type = lib.types.strMatching "[a-z_][a-z0-9_-]*";
      default = "tiffin-";
      description = ''
        Each host logs in as the account `<userPrefix><host>`, with its own
        group of the same name. Must equal `server.user_prefix` in `fleet.toml`.
      '';
    };

    authorizedKeysDir = lib.mkOption {
      type = lib.types.strMatching "/etc/.+[^/]";
      default = "/etc/tiffin/authorized_keys";
      description = ''
        Where each account's key file lives (one root-owned file per account,
        outside every chroot). Under {file}`/etc`, managed through
        {option}`environment.etc`. Must equal `server.authorized_keys_dir` in
        `fleet.toml`.
      '';
    };

    hosts = lib.mkOption {
      type = lib.types.attrsOf (lib.types.submodule {
        options.publicKey = lib.mkOption {
          type = lib.types.singleLineStr;
          example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKnzVSNBgkHy5gD7Pyv8u6nmEPvyLpKBvxTJmvwl9r8x web-1";
          description = ''
            The host's public key, the same as `public_key` in its
            `hosts/<host>/host.toml`. It is installed with the `restrict`
            option, so it allows nothing but the SFTP session.
          '';
        };
      });
      default = {};
      example = lib.literalExpression ''
        {
          web-1.publicKey = "ssh-ed25519 AAAA… root@web-1";
          db-1.publicKey = "ssh-ed25519 AAAA… root@db-1";
        }
      '';
      description = ''
        The hosts of the fleet, by name (`[a-z][a-z0-9-]*`). Each gets a
        system account, a group, a chroot and an sshd `Match` block.
      '';
    };

    sshdExtra = lib.mkOption {
      type = lib.types.listOf lib.types.singleLineStr;
      default = [];
      example = ["ClientAliveInterval 30" "ClientAliveCountMax 3"];
      description = ''
        Extra lines for every host's sshd `Match` block, like
        `server.sshd_extra` in `fleet.toml`. Only keywords sshd allows inside
        `Match` work; the system build checks the result with `sshd -T`.
        Each block has `ClientAliveInterval 15` and `ClientAliveCountMax 4`
        unless a line here sets that keyword.
        Lines with `$`, a backtick or `\` are refused: nixpkgs' sshd module
        passes {option}`services.openssh.extraConfig` through an unquoted
        shell here-document, which would expand them.
      '';
    };

    build.enable = lib.mkEnableOption ''
      building the systems of hosts with `[apply] build = "server"` on this
      server: `tiffin publish` builds, signs and ships each such host its own
      closure as a binary cache inside its release (tiffin's docs/prebuilt.md).
      Enables the `nix-command` and `flakes` features the build uses'';

    build.signingKeyFile = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "/var/lib/tiffin/signing-key";
      description = ''
        The fleet's Nix signing key, from
        `nix key generate-secret --key-name fleet-1`; the same file as
        `server.signing_key` in `fleet.toml`. A string, never a Nix path: a
        path would be copied into the world-readable Nix store. Kept mode
        0600, owned by root. Clients trust its public half
        ({option}`services.tiffin.client.cachePublicKey`).
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions =
      lib.concatMap (host: [
        {
          assertion = builtins.match "[a-z][a-z0-9-]*" host != null;
          message = "services.tiffin.server.hosts.${host}: a host name is a lowercase letter, then lowercase letters, digits or '-'.";
        }
        {
          assertion = builtins.stringLength (account host) <= 32;
          message = "services.tiffin.server.hosts.${host}: the account ${account host} is longer than the 32 bytes a Unix account name may have; shorten the host name or userPrefix.";
        }
      ])
      hostNames
      ++ map (line: {
        assertion = !(shellExpanded line || endsHeredoc line);
        message = "services.tiffin.server.sshdExtra: the line ${builtins.toJSON line} would be changed on its way into sshd_config (nixpkgs' sshd module writes services.openssh.extraConfig through an unquoted shell here-document, which expands $, backticks and \\, and ends at a line EOL); write it without them.";
      })
      cfg.sshdExtra
      ++ lib.optionals cfg.build.enable [
        {
          assertion = cfg.build.signingKeyFile != null;
          message = "services.tiffin.server.build.enable needs services.tiffin.server.build.signingKeyFile: generate a key with `nix key generate-secret --key-name fleet-1 > /var/lib/tiffin/signing-key` and name that file.";
        }
        {
          assertion = let
            key = toString cfg.build.signingKeyFile;
          in
            cfg.build.signingKeyFile == null || (lib.hasPrefix "/" key && !lib.hasPrefix builtins.storeDir key);
          message = "services.tiffin.server.build.signingKeyFile: ${builtins.toJSON cfg.build.signingKeyFile} must be an absolute path outside ${builtins.storeDir}: the store is readable by every user, and the key signs what every host installs.";
        }
      ]
      ++ map (opt: {
        assertion = !(shellExpanded cfg.${opt});
        message = "services.tiffin.server.${opt}: ${builtins.toJSON cfg.${opt}} holds $, a backtick or \\, which the shell writing sshd_config would expand; choose a path without them.";
      }) ["chrootRoot" "authorizedKeysDir"];

    environment.systemPackages = [cfg.package];

    users.users = lib.listToAttrs (map (host: {
        name = account host;
        value = {
          isSystemUser = true;
          group = account host;
          description = "tiffin host ${host}";
          # As provision does: the home is the chroot (never created here).
          home = chroot host;
          createHome = false;
          # NixOS writes "!" (locked) for a new user without a password
          # (nixos/modules/config/update-users-groups.pl), and sshd refuses even
          # key logins to a locked account unless PAM does the account checks.
          # "*" means no usable password without locking, whatever UsePAM says
          # (nixos/modules/config/users-groups.nix, allowsLogin). With
          # users.mutableUsers, an account created earlier keeps its old field:
          # fix it once with `usermod -p '*' <account>`.
          hashedPassword = "*";
        };
      })
      hostNames);
    users.groups = lib.genAttrs (map account hostNames) (_: {});

    # The owners and modes `tiffin provision` gives (docs/provision.md): the chroot and
    # releases/ root:<account> 0750, reports/ the account's own 0700; publish
    # creates the releases and CURRENT with the same group.
    systemd.tmpfiles.settings."10-tiffin-server" =
      {
        ${cfg.chrootRoot}.d = {
          mode = "0755";
          user = "root";
          group = "root";
        };
      }
      // lib.listToAttrs (lib.concatMap (host: [
          {
            name = chroot host;
            value.d = {
              mode = "0750";
              user = "root";
              group = account host;
            };
          }
          {
            name = "${chroot host}/releases";
            value.d = {
              mode = "0750";
              user = "root";
              group = account host;
            };
          }
          {
            name = "${chroot host}/reports";
            value.d = {
              mode = "0700";
              user = account host;
              group = account host;
            };
          }
        ])
        hostNames);

    # Each host's reports/ on a tmpfs of its own, the bound `tiffin provision` mounts:
    # no client can fill the filesystem that holds every host's releases. tmpfs takes
    # only a numeric uid= and the accounts' uids are dynamic, so mount(8) itself
    # gives the mounted root its owner by name (X-mount.owner/group, util-linux
    # 2.39+) right after mounting. That holds for a host added by a switch too:
    # switch-to-configuration creates the account (activation) before it starts
    # the new mount unit, but after it has re-run tmpfiles, so the tmpfiles rule
    # above alone would leave that reports/ root's until the next boot.
    # Reports are lost at a reboot until each host's next poll.
    fileSystems = lib.listToAttrs (map (host: {
        name = "${chroot host}/reports";
        value = {
          device = "tmpfs";
          fsType = "tmpfs";
          options = [
            "size=1m"
            "nr_inodes=64"
            "mode=0700"
            "nosuid"
            "nodev"
            "noexec"
            "X-mount.owner=${account host}"
            "X-mount.group=${account host}"
          ];
        };
      })
      hostNames);

    environment.etc = lib.listToAttrs (map (host: {
        name = lib.removePrefix "/etc/" (keysFile host);
        # A root-owned copy (0644, as provision writes it), not a link into the
        # Nix store: with StrictModes sshd checks every directory up to the key
        # file, and /nix/store is group-writable.
        value = {
          mode = "0644";
          text = "restrict ${cfg.hosts.${host}.publicKey}\n";
        };
      })
      hostNames);

    # Prebuilt releases: the build's Nix features, a private server state
    # directory (the shared cache pool), and the key kept root's alone.
    nix.settings.experimental-features = lib.mkIf cfg.build.enable ["nix-command" "flakes"];
    systemd.tmpfiles.settings."10-tiffin-server-build" = lib.mkIf cfg.build.enable ({
        "/var/lib/tiffin/prebuilt".d = {
          mode = "0700";
          user = "root";
          group = "root";
        };
      }
      // lib.optionalAttrs (cfg.build.signingKeyFile != null) {
        ${cfg.build.signingKeyFile}.z = {
          mode = "0600";
          user = "root";
          group = "root";
        };
      });

    services.openssh.enable = true;
    # Match blocks must come last in sshd_config. Whatever another module adds
    # to extraConfig ordered after this (a later lib.mkAfter or lib.mkOrder >
    # 1500) lands inside the last Match block and applies to that host only.
    services.openssh.extraConfig = lib.mkIf (hostNames != []) (lib.mkAfter matchBlocks);
  };
}
