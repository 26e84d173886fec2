# The systemd units (and the files they name) that tiffin's NixOS modules
# give a host, rendered by NixOS's own unit generator: nixos/lib/utils.nix,
# systemd-lib.nix and the module nixos/modules/system/boot/systemd.nix, from
# a copy of those nixpkgs files (`nixpkgsNixos`, shared/nixpkgs-nixos on CI),
# with nixpkgs' real lib. tiffin-lab installs the result on a lab machine
# that boots the real systemd (`[lab] init = "systemd"`, docs/lab.md), so the
# units the lab runs are the modules' and nothing written by hand.
#
# What is not NixOS: `pkgs`. Each package is a store path of its own under
# /nix/store (the lab machine's private, copy-on-write store), which the lab
# makes a link to what stands in for it on the machine: tiffin to the lab's
# build, nixos-rebuild to the lab's stand-in, everything else (coreutils,
# openssh, systemd, …) to the machine's /usr. The scripts NixOS writes
# (preStart, script, …) are real files with the generator's own text.
# Everything the modules set outside systemd.* goes into catch-all options,
# read here only for the polkit rule and the desktop entry.
#
# Arguments: nixpkgsLib, nixpkgsNixos (directories), module ("client" or
# "server"), options (JSON: the services.tiffin.<module> settings),
# tiffinBin and rebuildBin (absolute paths on the machine).
{
  nixpkgsLib,
  nixpkgsNixos,
  module,
  options,
  tiffinBin,
  rebuildBin,
}: let
  lib = import nixpkgsLib;

  storePath = name: "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" name)}-${name}";

  # A stand-in derivation whose path the lab links to `target`.
  drv = attrs: let
    self =
      attrs
      // {
        type = "derivation";
        outPath = storePath attrs.name;
        outputs = attrs.outputs or ["out"];
        meta = attrs.meta or {};
        overrideAttrs = f: drv (attrs // f attrs);
      };
  in
    self;
  onMachine = name: target: drv {inherit name target;};
  usr = name: onMachine name "/usr";

  # Written files (scripts): their path depends on their text, as in a store.
  textFile = {
    name,
    text,
    executable ? false,
    destination ? "",
    meta ? {},
    ...
  } @ args:
    drv (args // {name = "${builtins.substring 0 12 (builtins.hashString "sha256" text)}-${name}";} // {inherit meta;});

  pkgs = rec {
    inherit lib;
    systemd = usr "systemd";
    coreutils = usr "coreutils";
    findutils = usr "findutils";
    gnugrep = usr "gnugrep";
    gnused = usr "gnused";
    util-linux = usr "util-linux";
    bash = usr "bash";
    runtimeShell = "/bin/bash";
    buildPackages.xorg.lndir = usr "lndir";
    openssh = usr "openssh";
    gitMinimal = usr "git";
    gnutar = usr "gnutar";
    gzip = usr "gzip";
    xz = usr "xz" // {bin = usr "xz-bin";};
    writeTextFile = textFile;
    writeText = name: text: textFile {inherit name text;};
    writeShellScriptBin = name: text:
      textFile {
        inherit name;
        executable = true;
        destination = "/bin/${name}";
        text = "#!${runtimeShell}\n${text}\n";
        meta.mainProgram = name;
      };
    writeShellApplication = {
      name,
      text,
      ...
    }:
      textFile {
        inherit name;
        executable = true;
        destination = "/bin/${name}";
        text = "#!${runtimeShell}\nset -o errexit\nset -o nounset\nset -o pipefail\n\n${text}\n";
        meta.mainProgram = name;
      };
    runCommand = name: env: script: drv (env // {inherit name;});
    makeDesktopItem = a: drv {name = "${a.name}.desktop";} // {desktopItem = a;};
    formats.toml = {}: {
      type = lib.types.attrsOf lib.types.anything;
      generate = name: value: builtins.toFile name (builtins.toJSON value);
    };
    callPackage = _: _: throw "render-units.nix: the package is given, never built";
  };

  # A package whose only file is bin/<name>: the lab links that file to `bin`.
  program = name: file: drv {inherit name file;} // {meta.mainProgram = name;};
  tiffin = program "tiffin" tiffinBin;

  # The rest of NixOS, as far as systemd.nix and tiffin's modules touch it.
  nixosStub = {config, ...}: let
    catchAll = lib.mkOption {
      type = lib.types.lazyAttrsOf lib.types.anything;
      default = {};
    };
    list = lib.mkOption {
      type = lib.types.listOf lib.types.unspecified;
      default = [];
    };
  in {
    options = {
      warnings = list;
      assertions = list;
      system = catchAll;
      # Declared leaf by leaf: a free-form `services` would make the modules'
      # own `lib.mkIf cfg.enable` depend on itself.
      environment.systemPackages = list;
      environment.etc = catchAll;
      environment.variables = catchAll;
      services.openssh = catchAll;
      services.prometheus = catchAll;
      services.dbus = catchAll;
      services.logrotate = catchAll;
      users = catchAll;
      security = catchAll;
      boot.kernel = catchAll;
      fileSystems = catchAll;
      nix = catchAll;
      networking = catchAll;
      programs = catchAll;
      meta = catchAll;
      systemd.tmpfiles = catchAll;
    };
    config = {
      _module.args.utils = import (nixpkgsNixos + "/nixos/lib/utils.nix") {inherit lib config pkgs;};
      networking.hostName = "lab";
      networking.proxy.envVars = {};
      nix.envVars = {};
      nix.package.out = usr "nix";
      programs.ssh.package = pkgs.openssh;
      system.build.nixos-rebuild = program "nixos-rebuild" rebuildBin;
    };
  };

  settings = builtins.fromJSON options;
  eval = lib.evalModules {
    specialArgs.pkgs = pkgs;
    modules = [
      nixosStub
      (nixpkgsNixos + "/nixos/modules/system/boot/systemd.nix")
      ../../nix/modules/${module}.nix
      {services.tiffin.${module} = settings // {package = tiffin;};}
    ];
  };
  cfg = eval.config.systemd;

  # The job scripts' text, from the real makeJobScript with a writer that
  # returns the text where the path would be.
  capture = import (nixpkgsNixos + "/nixos/lib/systemd-lib.nix") {
    inherit lib;
    inherit (eval) config;
    utils = {};
    pkgs =
      pkgs
      // {
        writeShellScriptBin = name: text: let
          d = pkgs.writeShellScriptBin name text;
        in
          d
          // {
            outPath = d.text;
            overrideAttrs = _: d // {outPath = d.text;};
          };
      };
  };
  real = import (nixpkgsNixos + "/nixos/lib/systemd-lib.nix") {
    inherit lib pkgs;
    inherit (eval) config;
    utils = {};
  };
  kinds = {
    preStart = "pre-start";
    script = "start";
    postStart = "post-start";
    reload = "reload";
    preStop = "pre-stop";
    postStop = "post-stop";
  };
  scriptsOf = name: svc:
    lib.concatLists (lib.mapAttrsToList (attr: suffix:
      lib.optional ((svc.${attr} or "") != "") (let
        job = {
          name = "${name}-${suffix}";
          text = svc.${attr};
          inherit (svc) enableStrictShellChecks;
        };
        path = real.makeJobScript job;
      in {
        inherit path;
        text = lib.removeSuffix "/bin/${builtins.baseNameOf path}" (capture.makeJobScript job);
      }))
    kinds);
  tiffinServices = lib.filterAttrs (n: _: lib.hasPrefix "tiffin-" n) cfg.services;
  tiffinUnits = lib.filterAttrs (n: _: lib.hasPrefix "tiffin-" n) cfg.units;

  # Every stand-in package a unit may name: store path (or its bin/<name>) -> what it links to.
  links = lib.listToAttrs (map (p:
    if p ? file
    then lib.nameValuePair "${p.outPath}/bin/${p.name}" p.file
    else lib.nameValuePair p.outPath p.target) (builtins.filter (p: p ? target || p ? file) [tiffin pkgs.systemd pkgs.coreutils pkgs.findutils pkgs.gnugrep pkgs.gnused pkgs.util-linux pkgs.bash pkgs.openssh pkgs.gitMinimal pkgs.gnutar pkgs.gzip pkgs.xz.bin eval.config.nix.package.out eval.config.system.build.nixos-rebuild]));
  desktop = map (p: p.desktopItem) (builtins.filter (p: p ? desktopItem) (eval.config.environment.systemPackages or []));
in {
  # unit name -> its text, as NixOS writes it to /etc/systemd/system.
  units = lib.mapAttrs (_: u: u.text) tiffinUnits;
  # target -> the units that name it in wantedBy (NixOS's <target>.wants links).
  wants =
    lib.foldlAttrs (acc: name: u:
      lib.foldl' (a: t: a // {${t} = (a.${t} or []) ++ [name];}) acc (u.wantedBy or []))
    {}
    tiffinUnits;
  # store path -> file text (mode 0555): the job scripts the units run.
  scripts = lib.listToAttrs (map (s: lib.nameValuePair s.path s.text) (lib.concatLists (lib.mapAttrsToList scriptsOf tiffinServices)));
  # store path -> what it stands for on the machine.
  inherit links;
  # security.polkit has no value when the module gives no rule (lib.mkIf false).
  polkitRules = let
    rules = builtins.tryEval (eval.config.security.polkit.extraConfig or "");
  in
    if rules.success
    then rules.value
    else "";
  desktopEntries =
    map (d: {
      inherit (d) name;
      text = "[Desktop Entry]\nType=Application\nName=${d.desktopName}\nComment=${d.comment or ""}\nExec=${d.exec}\nIcon=${d.icon or ""}\nTerminal=${lib.boolToString (d.terminal or false)}\nCategories=${lib.concatStringsSep ";" (d.categories or [])};\n";
    })
    desktop;
  # systemd.tmpfiles.settings as tmpfiles.d lines, as NixOS's tmpfiles module writes them
  # (type path mode user group age argument; "-" where unset).
  tmpfiles = let
    settings = eval.config.systemd.tmpfiles.settings or {};
    field = v:
      if v == null || v == ""
      then "-"
      else toString v;
    line = path: type: e: "${type} ${path} ${field (e.mode or null)} ${field (e.user or null)} ${field (e.group or null)} ${field (e.age or null)} ${field (e.argument or null)}";
  in
    lib.concatStrings (lib.concatLists (lib.mapAttrsToList (_: paths:
      lib.concatLists (lib.mapAttrsToList (path: types:
        lib.mapAttrsToList (type: e: line path type e + "\n") types)
      paths))
    settings));
  warnings = eval.config.warnings;
  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) eval.config.assertions);
}
