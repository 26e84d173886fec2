# Turns one lab scenario (vm-scenarios/*.toml, schema in docs/formats.md
# "Lab scenarios") into what its NixOS VM test needs: the machines, the
# settings of the server module, the client configurations to pre-build, and
# the Python testScript. Builtins only, so `nixos-tests/static-check` runs it
# with plain `nix-instantiate --eval --strict` and no nixpkgs.
#
# A step the VMs cannot honour stops the evaluation with an error naming the
# scenario and the step; nothing is skipped silently.
{
  # The scenario's file name without .toml, used in messages and names.
  name,
  # The scenario's TOML text.
  text,
  # How messages name the scenario file.
  where ? "vm-scenarios/${name}.toml",
  # Fixed test keys (nixos-tests/keys.nix).
  keys ? import ../keys.nix,
  # src/admin/templates of this repository: the configuration `tiffin host add` writes.
  templates ? ../../src/admin/templates,
  # Steps the VMs cannot run, each with its reason (nixos-tests/vm-overrides.toml).
  overrides ? builtins.fromTOML (builtins.readFile ../vm-overrides.toml),
  # Files the translator cannot make itself, because they come from the flake
  # (store paths of the nixpkgs and tiffin sources) or from the evaluated nodes:
  # { flakeNix; flakeLock; tiffinWrapper; vmTestNix; vmJson = host: file;
  #   evalCheck = host: null or { tree; toplevel; } }. The static checks pass
  # placeholders.
  vmFiles,
}: let
  scenario = builtins.fromTOML text;
  fail = msg: throw "nixos-tests: ${where}: ${msg}";

  # ---- small helpers (builtins only) ----------------------------------------
  concatMapStrings = f: l: builtins.concatStringsSep "" (map f l);
  imap = f: l: builtins.genList (i: f (i + 1) (builtins.elemAt l i)) (builtins.length l);
  unique = l:
    builtins.foldl' (acc: x:
      if builtins.elem x acc
      then acc
      else acc ++ [x]) []
    l;
  # Python string literal: JSON's escapes are valid Python.
  py = builtins.toJSON;
  # POSIX shell single-quoting.
  sh = s: "'" + builtins.replaceStrings ["'"] ["'\\''"] s + "'";
  checkKeys = what: allowed: attrs: let
    unknown = builtins.filter (k: !(builtins.elem k allowed)) (builtins.attrNames attrs);
  in
    if unknown == []
    then true
    else fail "${what}: unknown key(s) ${builtins.concatStringsSep ", " unknown} (known: ${builtins.concatStringsSep ", " allowed}); the VM tests would not know what to do with them";
  # "0600" -> "600", as `stat -c %a` prints it.
  statMode = what: m: let
    r = builtins.match "0*([0-7]+)" m;
  in
    if builtins.match "[0-7]{3,4}" m == null
    then fail "${what}: mode ${builtins.toJSON m} is not 3 or 4 octal digits"
    else builtins.head r;
  isList = builtins.isList;
  asList = x:
    if isList x
    then x
    else [x];
  indent = prefix: s: let
    lines = builtins.filter builtins.isString (builtins.split "\n" s);
  in
    builtins.concatStringsSep "\n" (map (l:
      if l == ""
      then l
      else prefix + l)
    lines);

  # ---- the scenario ---------------------------------------------------------
  _top = checkKeys "top level" ["lab" "fleet" "step"] scenario;
  lab = scenario.lab or {};
  _lab = checkKeys "[lab]" ["clients" "init" "client_module" "server_module"] lab;
  # `init = "systemd"` is the lab's choice of PID 1; the VMs always boot systemd. The
  # module options a scenario gives its units apply to the VMs' modules as well.
  clientModule = lab.client_module or {};
  serverModule = lab.server_module or {};
  clients = lab.clients or ["client1" "client2" "client3"];
  machines = ["server"] ++ clients;
  keyNames = ["client1" "client2" "client3" "client4" "client5"];
  _clients =
    if builtins.length clients > builtins.length keyNames
    then fail "[lab] clients: at most ${toString (builtins.length keyNames)} clients (one fixed test key each, nixos-tests/keys.nix)"
    else if builtins.any (c: builtins.match "[a-z][a-z0-9-]*" c == null || c == "server") clients
    then fail "[lab] clients: each must be a host name ([a-z][a-z0-9-]*) other than \"server\""
    else true;
  clientKey = c: keys.${builtins.elemAt keyNames (index c clients)};
  index = x: l: let
    go = i:
      if builtins.elemAt l i == x
      then i
      else go (i + 1);
  in
    go 0;
  # Python identifiers of the machines (the driver replaces '-' by '_').
  pyName = m: builtins.replaceStrings ["-"] ["_"] m;
  machine = what: m:
    if builtins.elem m machines
    then pyName m
    else fail "${what}: no machine ${builtins.toJSON m} (machines: ${builtins.concatStringsSep ", " machines})";
  client = what: m:
    if builtins.elem m clients
    then pyName m
    else fail "${what}: ${builtins.toJSON m} is not a client of this scenario (clients: ${builtins.concatStringsSep ", " clients})";

  fleet = scenario.fleet or {};
  _fleet = checkKeys "[fleet]" ["poll_interval" "sshd_extra" "hosts" "common_files"] fleet;
  hostsCfg = fleet.hosts or {};
  _hosts = builtins.all (h:
    if !(builtins.elem h clients)
    then fail "[fleet.hosts.${h}]: ${h} is not a client of this scenario"
    else checkKeys "[fleet.hosts.${h}]" ["configuration" "files" "host_toml"] hostsCfg.${h})
  (builtins.attrNames hostsCfg);

  # What the server module and fleet.toml must agree on.
  server = {
    chrootRoot = "/var/lib/tiffin/chroots";
    userPrefix = "tiffin-";
    sshdExtra = fleet.sshd_extra or [];
    pollInterval = fleet.poll_interval or "15m";
  };
  fleetDir = "/root/fleet";
  # The lab's addresses (src/lab/machine.rs), given to the VMs too, so that
  # scenario commands naming them work in both.
  serverAddress = "192.0.2.1";
  labAddress = c: "192.0.2.${toString (11 + index c clients)}";
  account = c: server.userPrefix + c;
  chroot = c: "${server.chrootRoot}/${c}";
  tomlStr = builtins.toJSON;
  fleetToml = builtins.toFile "fleet.toml" ''
    # Written by nixos-tests for ${where}; must match services.tiffin.server.
    [server]
    # What every host's common/tiffin.nix gives its tiffin client.
    address = ${tomlStr serverAddress}
    port = 22
    host_key = ${tomlStr keys.server.public}
    chroot_root = ${tomlStr server.chrootRoot}
    user_prefix = ${tomlStr server.userPrefix}
    sshd_extra = [${builtins.concatStringsSep ", " (map tomlStr server.sshdExtra)}]

    [defaults]
    poll_interval = ${tomlStr server.pollInterval}
  '';

  # The configuration.nix `tiffin host add` writes, as the lab gets it.
  defaultConfiguration = c: builtins.replaceStrings ["@HOST@"] [c] (builtins.readFile (templates + "/configuration.nix"));
  initialConfiguration = c: hostsCfg.${c}.configuration or (defaultConfiguration c);

  # A file of the fleet repository, as a store file the server VM copies in.
  fixture = label: content: builtins.toFile "tiffin-${name}-${label}" content;
  # Store path names allow only [A-Za-z0-9+._?=-].
  safeLabel = path: builtins.concatStringsSep "_" (builtins.filter builtins.isString (builtins.split "[^A-Za-z0-9+._?=-]+" path));

  install = {
    host,
    path,
    content,
    mode ? "0644",
    what,
  }: let
    _m = statMode what mode;
  in "server.succeed(${py "install -D -m ${mode} ${fixture "${host}-${safeLabel path}" content} ${sh "${fleetDir}/hosts/${host}/${path}"}"})";

  # [fleet.hosts.NAME] host_toml: added to the end of the host.toml `tiffin host add` wrote, as the lab does.
  appendHostToml = c:
    if hostsCfg ? ${c}.host_toml
    then "    server.succeed(${py "{ echo; cat ${fixture "${c}-host.toml" hostsCfg.${c}.host_toml}; } >> ${sh "${fleetDir}/hosts/${c}/host.toml"}"})\n"
    else "";
  # [fleet.common_files."PATH"]: files under common/files/, deployed to every host.
  commonFilesCfg = fleet.common_files or {};
  installCommonFiles = concatMapStrings (p: let
    f = commonFilesCfg.${p};
    what = "[fleet.common_files.${builtins.toJSON p}]";
    mode = f.mode or "0644";
    _m = statMode what mode;
  in
    if builtins.seq _m (checkKeys what ["content" "mode"] f)
    then "    server.succeed(${py "install -D -m ${mode} ${fixture "common-${safeLabel p}" (f.content or (fail "${what}: content is required"))} ${sh "${fleetDir}/common/files/${p}"}"})\n"
    else "") (builtins.attrNames commonFilesCfg);

  # ---- setup: the fleet repository on the server, as the lab builds it ------
  setupFleet =
    ''
      with subtest("fleet repository: tiffin init, host add, the scenario's [fleet]"):
          server.succeed("tiffin init ${fleetDir}")
          # The example host has no account on the server; the lab's fleet has only its clients.
          server.succeed("rm -r ${fleetDir}/hosts/example")
          server.succeed("install -m 0644 ${fleetToml} ${fleetDir}/fleet.toml")
          # The fleet's own flake template, its inputs pinned to the test's nixpkgs and tiffin (store paths the clients hold).
          server.succeed("install -m 0644 ${vmFiles.flakeNix} ${fleetDir}/templates/flake.nix")
          server.succeed("install -m 0644 ${vmFiles.flakeLock} ${fleetDir}/templates/flake.lock")
          # The VM's own parts (disks, test backdoor, network), beside the fleet's common/tiffin.nix.
          server.succeed("mv ${fleetDir}/common/tiffin.nix ${fleetDir}/common/fleet-tiffin.nix")
          server.succeed("install -m 0644 ${vmFiles.tiffinWrapper} ${fleetDir}/common/tiffin.nix")
          server.succeed("install -m 0644 ${vmFiles.vmTestNix} ${fleetDir}/common/vm-test.nix")
    ''
    + concatMapStrings (c:
      indent "    " ''
        server.succeed("tiffin host add ${c} --fleet ${fleetDir} --key ${builtins.toFile "${c}.pub" (clientKey c).public}")
        # host add linked templates/flake.lock, the shared lock.
        server.succeed("test \"$(readlink ${fleetDir}/hosts/${c}/flake.lock)\" = ../../templates/flake.lock")
        server.succeed("install -m 0644 ${vmFiles.vmJson c} ${fleetDir}/hosts/${c}/tiffin-vm.json")
      ''
      + "\n"
      + (
        if hostsCfg ? ${c}.configuration
        then
          "    "
          + install {
            host = c;
            path = "configuration.nix";
            content = hostsCfg.${c}.configuration;
            what = "[fleet.hosts.${c}] configuration";
          }
          + "\n"
        else ""
      )
      + concatMapStrings (p: let
        f = hostsCfg.${c}.files.${p};
        what = "[fleet.hosts.${c}.files.${builtins.toJSON p}]";
      in
        if checkKeys what ["content" "mode"] f
        then
          "    "
          + install {
            host = c;
            path = "files/${p}";
            content = f.content or (fail "${what}: content is required");
            mode = f.mode or "0644";
            inherit what;
          }
          + "\n"
        else "") (builtins.attrNames (hostsCfg.${c}.files or {}))
      + appendHostToml c)
    clients
    + installCommonFiles
    + "    server.succeed(\"tiffin check --fleet ${fleetDir}\")\n\n"
    + builtins.concatStringsSep "\n" (map (c:
      ''
        with subtest("${c}: the client module is ready"):
            ${pyName c}.wait_for_unit("multi-user.target")
            # The timer is installed and enabled but never fires in the VMs, so steps decide when pulls run.
            ${pyName c}.succeed("systemctl cat tiffin-pull.timer && test -e /etc/systemd/system/timers.target.wants/tiffin-pull.timer")
            # The system generations before any pull, so steps can count the rebuilds since.
            ${pyName c}.succeed("{ ls -d /nix/var/nix/profiles/system-*-link 2>/dev/null || true; } | wc -l > /tmp/tiffin-vm-generations-at-start")
            ${pyName c}.succeed("install -D -m 0600 ${builtins.toFile "${c}-identity" (clientKey c).private} /etc/tiffin/id_ed25519")
      ''
      + evalCheck c)
    clients);

  # Before any pull: the system the VM evaluates from the fleet's flake (its
  # first configuration, as a release gives it) must be the one pre-built on
  # the host, or the offline rebuild would have to build it and fail late.
  evalTimeout = 1800;
  # In a prebuilt scenario the server evaluates (and builds) the clients'
  # systems, so the server VM runs this check; the clients evaluate nothing.
  evalCheck = c: let
    check = vmFiles.evalCheck c;
    m =
      if prebuilt
      then "server"
      else pyName c;
    attr = "path:${check.tree}#nixosConfigurations.${c}.config.system.build.toplevel.outPath";
  in
    if check == null
    then "    # ${c}: no configuration of this scenario evaluates, so there is no pre-built system to compare.\n"
    else
      indent "    " ''
        status, out = ${m}.execute(${py "nix --extra-experimental-features 'nix-command flakes' eval --raw '${attr}' 2>/tmp/tiffin-vm-eval.err"}, timeout=${toString evalTimeout})
        assert status == 0, ${py "${c}: evaluating the fleet's flake in the VM failed: "} + ${m}.succeed("cat /tmp/tiffin-vm-eval.err")
        assert out.strip() == ${py "${check.toplevel}"}, ${py "${c}: the VM evaluates the fleet's flake to %s, but the host pre-built ${check.toplevel}: the rebuild inside the offline VM would have to build it. Something the evaluation reads differs between host and VM (the inputs' version info, the package's source, a file of the fleet)."} % out.strip()
      ''
      + "\n";

  # ---- steps ----------------------------------------------------------------
  steps = scenario.step or [];
  # A prebuilt scenario ([apply] build = "server", docs/prebuilt.md): its
  # steps set the fleet up with the lab's vm-scenarios/bin/prebuilt-fleet
  # (replaced for the VMs in nixos-tests/vm-overrides.toml). The server VM
  # then builds each client's real system, so scenario-test.nix gives it the
  # signing keys and every client's pre-built systems, and the clients
  # nothing but the fleet's public key: they must download their closures.
  prebuilt = builtins.any (s: builtins.match ".*prebuilt-fleet.*" (s.command or "") != null) steps;
  # A prebuilt publish evaluates every host's NixOS system and the first one
  # signs and compresses (xz) whole closures on the server VM's 2 cores: more
  # than the driver's default 900 s per command.
  serverTimeout =
    if prebuilt
    then ", timeout=3600"
    else "";
  overridesOf = kind: let
    mine = builtins.filter (o: o.scenario == name) (overrides.${kind} or []);
  in
    builtins.seq (builtins.all (o:
      if o.step < 1 || o.step > builtins.length steps
      then fail "nixos-tests/vm-overrides.toml: [[${kind}]] names step ${toString o.step}, which the scenario does not have: update the override"
      else true)
    mine)
    mine;
  skips = overridesOf "skip";
  replaces = overridesOf "replace";
  # expect_denied: the lab's attempts (src/lab/access.rs), run by
  # lib/denied.sh on the client with OpenSSH's ssh and sftp, after the same
  # control (the client lists its chroot and writes its reports).
  accesses = ["read-other" "list-other" "write-release" "write-root" "shell" "port-forward" "wrong-key"];
  needsOther = ["read-other" "list-other" "wrong-key"];
  denied = what: s: let
    c = s.on or (fail "${what}: `on` is required");
    m = client what c;
    access = s.access or (fail "${what}: `access` is required");
    other =
      if builtins.elem access needsOther
      then builtins.seq (client "${what} other" (s.other or (fail "${what}: access ${access} needs `other`"))) s.other
      else "";
    currentOf = h: "server.succeed(${py "cat ${chroot h}/CURRENT 2>/dev/null || true"}).strip()";
    args = map sh [
      access
      (account c)
      serverAddress
      server.chrootRoot
      other
      (
        if other == ""
        then ""
        else account other
      )
    ];
    run = "${m}.succeed(${py "bash ${./denied.sh} ${builtins.concatStringsSep " " args} "} + \"'\" + own_id + \"' '\" + other_id + \"'\")\n";
    # After write attempts the server must show no trace of them.
    untouched =
      if builtins.elem access ["write-release" "write-root"]
      then ''
        server.succeed(${py "test \"$(cat ${chroot c}/CURRENT 2>/dev/null)\" = '"} + own_id + "'")
        server.succeed(${py "test ! -e ${chroot c}/evil -a ! -L ${chroot c}/evil -a ! -e ${chroot c}/releases/evil"})
        if own_id:
            server.succeed("echo '" + own_id + ${py "  ${chroot c}/releases/"} + own_id + ${py "/MANIFEST' | sha256sum -c && test ! -e ${chroot c}/releases/"} + own_id + "/evil")
      ''
      else "";
  in
    if !(builtins.elem access accesses)
    then fail "${what}: unknown access ${builtins.toJSON access} (known: ${builtins.concatStringsSep ", " accesses})"
    else
      "own_id = ${currentOf c}\n"
      + "other_id = ${
        if other == ""
        then "\"\""
        else currentOf other
      }\n"
      + run
      + untouched;

  # Extra arguments reach the real unit through a runtime drop-in, so the pull
  # still runs in the unit's environment (PATH, timeout).
  dropIn = "/run/systemd/system/tiffin-pull.service.d/tiffin-test-args.conf";
  # systemd's command-line quoting: double quotes, with \\, " and % escaped.
  unitArg = a: "\"" + builtins.replaceStrings ["\\" "\"" "%"] ["\\\\" "\\\"" "%%"] a + "\"";
  argsDropIn = args:
    builtins.toFile "tiffin-pull-args.conf" ''
      [Service]
      ExecStart=
      ExecStart=/run/current-system/sw/bin/tiffin pull --config /etc/tiffin/client.toml ${builtins.concatStringsSep " " (map unitArg args)}
    '';

  # Whether, before step i (1-based), the client's link or the server is down:
  # then a failed pull cannot upload its report, and the step checks only
  # that nothing was applied.
  lastOf = i: kinds: pred:
    builtins.foldl' (acc: s:
      if builtins.elem (s.do or "") kinds && pred s
      then s.do
      else acc)
    null (builtins.genList (j: builtins.elemAt steps j) (i - 1));
  linkDown = i: c: lastOf i ["net_down" "net_up"] (s: (s.on or null) == c) == "net_down";
  serverDown = i: lastOf i ["stop_server" "start_server"] (_: true) == "stop_server";

  # What a pull that applies nothing leaves as it was: the running system and
  # tiffin's current release.
  appliedState = "readlink -f /run/current-system; readlink /var/lib/tiffin/current || true";

  # A pull that rebuilds evaluates NixOS twice (nixos-rebuild, then the
  # switch's own check) on the VM's 2 cores: more than the driver's default
  # 900 s per command.
  pullTimeout = 1800;
  pull = i: what: s: let
    on = map (client what) (asList (s.on or clients));
    expect = s.expect or "ok";
    args = s.args or [];
    report = c: "${chroot c}/reports/status.toml";
    resultIs = c: r: "server.succeed(${py "grep -qx 'result = \"${r}\"' ${report c}"})\n";
    # The pull itself: the real unit, started the way its timer starts it.
    start = m:
      if args == []
      then "status, out = ${m}.execute(\"systemctl start tiffin-pull.service\", timeout=${toString pullTimeout})\n"
      else ''
        ${m}.succeed(${py "install -D -m 0644 ${argsDropIn args} ${dropIn} && systemctl daemon-reload"})
        status, out = ${m}.execute("systemctl start tiffin-pull.service", timeout=${toString pullTimeout})
        ${m}.succeed(${py "rm ${dropIn} && systemctl daemon-reload"})
      '';
    one = c: let
      m = pyName c;
    in
      if expect == "ok" || expect == "unchanged"
      then start m + "assert status == 0, ${py "${what}: the pull on ${c} failed, see tiffin-pull.service's journal"}\n" + resultIs c expect
      else if expect == "failed" && !(linkDown i c || serverDown i)
      then start m + "assert status != 0, ${py "${what}: the pull on ${c} succeeded"}\n" + resultIs c "failed"
      else if expect == "refused" || expect == "failed"
      then
        "before = ${m}.succeed(${py appliedState})\n"
        + start m
        + ''
          assert status != 0, ${py "${what}: the pull on ${c} did not fail"}
          assert ${m}.succeed(${py appliedState}) == before, ${py "${what}: the pull applied something on ${c}"}
        ''
      else fail "${what}: unknown expect ${builtins.toJSON expect} (ok, unchanged, failed, refused)";
  in
    if !(isList args)
    then fail "${what}: args must be a list"
    else builtins.seq (builtins.deepSeq on expect) (concatMapStrings one (asList (s.on or clients)));

  expectFile = what: s: let
    on = s.on or (fail "${what}: `on` is required");
    m = machine what on;
    path = s.path or (fail "${what}: `path` is required");
    p = sh path;
  in
    if s.absent or false
    then "${m}.succeed(${py "test ! -e ${p} && test ! -L ${p}"})\n"
    else
      "${m}.succeed(${py "test -f ${p}"})\n"
      + (
        if s ? content
        then "assert ${m}.succeed(${py "cat ${p}"}) == ${py s.content}, ${py "${what}: ${path} has other content"}\n"
        else ""
      )
      + (
        if s ? mode
        then "${m}.succeed(${py "test \"$(stat -c %a ${p})\" = ${statMode what s.mode}"})\n"
        else ""
      );

  expectStatus = what: s: let
    hosts = s.hosts or (fail "${what}: `hosts` is required");
    states = ["up-to-date" "pending" "failed" "rolled-back" "quarantined" "stale" "never-seen" "paused" "drifted" "expired" "unverifiable"];
  in
    ''
      out = server.succeed("tiffin status --json --fleet ${fleetDir} || test $? -eq 3")
      states = {row["host"]: row["state"] for row in json.loads(out)["hosts"]}
    ''
    + concatMapStrings (h:
      if !(builtins.elem hosts.${h} states)
      then fail "${what}: unknown state ${builtins.toJSON hosts.${h}} for ${h}"
      else if hosts.${h} == "stale"
      then fail "${what}: ${h} = \"stale\" needs three poll intervals without a report, and the VMs cannot move their clocks; skip the step ([[skip]] in nixos-tests/vm-overrides.toml)"
      else builtins.seq (client what h) "assert states.get(${py h}) == ${py hosts.${h}}, ${py "${what}: ${h} is %s, expected ${hosts.${h}}"} % states.get(${py h})\n")
    (builtins.attrNames hosts);

  # `run`: `sh -c` as in the lab (here sh FILE, so any command survives
  # quoting), stdout and stderr together. A background run is started
  # detached and checked at the next `wait` step, or at the scenario's end.
  runFile = i: cmd: builtins.toFile "tiffin-${name}-step-${toString i}.sh" cmd;
  bgPrefix = i: "/tmp/tiffin-vm-step-${toString i}";
  checkRun = what: s: code:
    ''
      assert status == ${toString code}, ${py "${what}: expected exit ${toString code}, got %d: "} % status + out
    ''
    + (
      if s ? expect_output
      then "assert ${py s.expect_output} in out, ${py "${what}: the output lacks ${s.expect_output}: "} + out\n"
      else ""
    );
  run = i: what: s: let
    m = machine what (s.on or (fail "${what}: `on` is required"));
    cmd = s.command or (fail "${what}: `command` is required");
    code = s.expect_exit or 0;
    file = runFile i cmd;
    bg = bgPrefix i;
  in
    if s.background or false
    then "${m}.succeed(${py "(sh ${file} >${bg}.out 2>&1; echo $? >${bg}.status) </dev/null >/dev/null 2>&1 &"})\n"
    else "status, out = ${m}.execute(${py "sh ${file} 2>&1"}${serverTimeout})\n" + checkRun what s code;

  # Watch steps: the VMs run the client module's own tiffin-watch.service
  # (installed by vm-base.nix, not started at boot), its output appended to
  # /var/tmp/tiffin-watch.log as in the lab. A wait_until deadline is at least
  # pullTimeout here: a VM's rebuild is the real one.
  watchDropIn = "/run/systemd/system/tiffin-watch.service.d/tiffin-test-log.conf";
  watchLog = builtins.toFile "tiffin-watch-log.conf" ''
    [Service]
    StandardOutput=append:/var/tmp/tiffin-watch.log
    StandardError=append:/var/tmp/tiffin-watch.log
  '';
  watchStart = what: s:
    concatMapStrings (c: "${client what c}.succeed(${py "mkdir -p $(dirname ${watchDropIn}) && cp ${watchLog} ${watchDropIn} && systemctl daemon-reload && systemctl start tiffin-watch.service"})\n")
    (asList (s.on or clients));
  watchStop = what: s:
    concatMapStrings (c: ''
      ${client what c}.succeed("systemctl stop tiffin-watch.service")
      ${client what c}.succeed(${py "test \"$(systemctl show -P ExecMainStatus tiffin-watch.service)\" = 0"})
    '')
    (asList (s.on or clients));
  waitUntil = i: what: s: let
    m = machine what (s.on or (fail "${what}: `on` is required"));
    within = s.within or (fail "${what}: `within` is required");
    timeout =
      if within > pullTimeout
      then within
      else pullTimeout;
  in "${m}.wait_until_succeeds(${py "sh ${runFile i (s.command or (fail "${what}: `command` is required"))} 2>&1"}, timeout=${toString timeout})\n";

  # The background runs started before step i and not yet waited for.
  pendingBackground = i:
    builtins.foldl' (acc: j: let
      s = builtins.elemAt steps (j - 1);
    in
      if (s.do or "") == "wait"
      then []
      else if (s.do or "") == "run" && (s.background or false)
      then acc ++ [j]
      else acc) [] (builtins.genList (j: j + 1) (i - 1));
  waitFor = js:
    concatMapStrings (j: let
      s = builtins.elemAt steps (j - 1);
      m = machine "step ${toString j}" s.on;
      what = "step ${toString j} (do = \"run\", background)";
    in
      ''
        ${m}.wait_until_succeeds(${py "test -e ${bgPrefix j}.status"}, timeout=900)
        status = int(${m}.succeed(${py "cat ${bgPrefix j}.status"}))
        out = ${m}.succeed(${py "cat ${bgPrefix j}.out"})
      ''
      + checkRun what s (s.expect_exit or 0))
    js;

  edit = what: s: let
    host = s.host or (fail "${what}: `host` is required");
    _h = client what host;
    path = s.path or (fail "${what}: `path` is required");
    dst = sh "${fleetDir}/hosts/${host}/${path}";
  in
    builtins.seq _h (
      if builtins.match "configuration\\.nix|files/.+" path == null
      then fail "${what}: the VM tests can edit only configuration.nix and files/… (they pre-build every configuration a client will switch to, from configuration.nix alone)"
      else if s.remove or false
      then "server.succeed(${py "rm ${dst}"})\n"
      else if s ? content
      then
        install {
          inherit host path what;
          inherit (s) content;
          mode = s.mode or "0644";
        }
        + "\n"
      else if s ? mode
      then builtins.seq (statMode what s.mode) "server.succeed(${py "chmod ${s.mode} ${dst}"})\n"
      else fail "${what}: an edit needs content, remove = true or mode"
    );

  stepKeys = {
    provision = ["expect"];
    publish = ["hosts"];
    edit = ["host" "path" "content" "remove" "mode"];
    pull = ["on" "expect" "args"];
    expect_file = ["on" "path" "content" "mode" "absent"];
    expect_denied = ["on" "access" "other"];
    expect_status = ["hosts"];
    net_down = ["on"];
    net_up = ["on"];
    stop_server = [];
    start_server = [];
    run = ["on" "command" "expect_exit" "expect_output" "background"];
    wait = [];
    watch_start = ["on"];
    watch_stop = ["on"];
    wait_until = ["on" "command" "within"];
  };

  translateStep = i: s0: let
    kind = s0.do or (fail "step ${toString i}: `do` is required");
    what = "step ${toString i} (do = ${builtins.toJSON kind})";
    # An override must still describe the step it was written for.
    matching = list: let
      found = builtins.filter (o: o.scenario == name && o.step == i) list;
      o = builtins.head found;
    in
      if found == []
      then null
      else if o.do != kind || (o.command or null) != (s0.command or null)
      then
        fail "${what}: nixos-tests/vm-overrides.toml names step ${toString i} as do = ${builtins.toJSON o.do}${
          if o ? command
          then " with command ${builtins.toJSON o.command}"
          else ""
        }, but the step is no longer that one: update the override"
      else o;
    replacement = matching replaces;
    s =
      if replacement == null
      then s0
      else
        s0
        // {command = replacement."with";}
        # The VM's own expectation, when the real system prints other facts than the lab's stand-ins.
        // (
          if replacement ? expect_output
          then {inherit (replacement) expect_output;}
          else {}
        );
    _k =
      if stepKeys ? ${kind}
      then checkKeys what (["do" "vm_skip"] ++ stepKeys.${kind}) s
      else fail "${what}: unknown step kind; the VM translator knows ${builtins.concatStringsSep ", " (builtins.attrNames stepKeys)}";
    body =
      if kind == "provision"
      then
        # The server module provisioned everything at boot; `expect` (changed or
        # nothing-to-do) describes `tiffin provision`, which the VMs do not run.
        ''
          server.wait_for_unit("sshd.service")
          server.wait_for_open_port(22)
          server.succeed(${py "test \"$(stat -c '%U:%G %a' ${server.chrootRoot})\" = 'root:root 755'"})
        ''
        + concatMapStrings (c: ''
          server.succeed("id ${account c}")
          server.succeed(${py "test \"$(stat -c '%U:%G %a' ${chroot c})\" = 'root:${account c} 750'"})
          server.succeed(${py "test \"$(stat -c '%U:%G %a' ${chroot c}/releases)\" = 'root:${account c} 750'"})
          server.succeed(${py "test \"$(stat -c '%U %a' ${chroot c}/reports)\" = '${account c} 700'"})
          server.succeed(${py "grep -qxF 'restrict ${(clientKey c).public}' /etc/tiffin/authorized_keys/${account c}"})
        '')
        clients
      else if kind == "publish"
      then "server.succeed(${py "tiffin publish --fleet ${fleetDir}${concatMapStrings (h: " " + builtins.seq (client what h) h) (asList (s.hosts or []))}"}${serverTimeout})\n"
      else if kind == "edit"
      then edit what s
      else if kind == "pull"
      then pull i what s
      else if kind == "expect_file"
      then expectFile what s
      else if kind == "expect_denied"
      then denied what s
      else if kind == "expect_status"
      then expectStatus what s
      else if kind == "net_down"
      then "${client what (s.on or (fail "${what}: `on` is required"))}.block()\n"
      else if kind == "net_up"
      then "${client what (s.on or (fail "${what}: `on` is required"))}.unblock()\n"
      else if kind == "stop_server"
      then "server.succeed(\"systemctl stop sshd.service\")\n"
      else if kind == "start_server"
      then "server.succeed(\"systemctl start sshd.service\")\nserver.wait_for_open_port(22)\n"
      else if kind == "run"
      then run i what s
      else if kind == "watch_start"
      then watchStart what s
      else if kind == "watch_stop"
      then watchStop what s
      else if kind == "wait_until"
      then waitUntil i what s
      else if kind == "wait"
      then let
        js = pendingBackground i;
      in
        if js == []
        then "pass  # no background run to wait for\n"
        else waitFor js
      else fail "${what}: unknown step kind";
    title = "step ${toString i}: ${kind}${
      if s ? on
      then " on ${builtins.concatStringsSep ", " (asList s.on)}"
      else ""
    }${
      if s ? expect
      then " (expect ${s.expect})"
      else ""
    }";
    # A step the VMs cannot run is skipped only when the scenario (vm_skip) or
    # nixos-tests/vm-overrides.toml says so and why, and the log shows it.
    skipped = matching skips;
    skipReason =
      if s ? vm_skip
      then s.vm_skip
      else if skipped == null
      then null
      else skipped.reason;
    # Commands that only make sense in the lab, and why.
    labOnly = [
      {
        pattern = ".*tiffin +provision.*";
        why = "runs `tiffin provision`, which a NixOS server does not use (services.tiffin.server provisions declaratively)";
      }
      {
        pattern = ".*sshd_config\\.d/tiffin\\.conf.*";
        why = "reads provision's sshd drop-in, which a NixOS server does not have (the module writes its Match blocks into /etc/ssh/sshd_config)";
      }
      {
        pattern = ".*(tiffin-lab|vm-scenarios/bin|/var/lib/fake-nix|TIFFIN_LAB_BIN|/var/lib/lab-switch).*";
        why = "uses the lab itself or its nixos-rebuild stand-in and its records (/var/lib/fake-nix), which the VMs replace with the real nixos-rebuild";
      }
      {
        pattern = ".*dev eth0.*";
        why = "names the lab's interface eth0; the VMs' test network is eth1";
      }
      {
        pattern = ".*>+ */etc/tiffin/client\\.toml.*";
        why = "writes /etc/tiffin/client.toml, which NixOS links into the read-only store";
      }
    ];
    labOnlyHit = builtins.filter (l: builtins.match l.pattern (s.command or "") != null) labOnly;
    fullTitle =
      if replacement == null
      then title
      else "${title}, VM variant: ${replacement.reason}";
  in
    builtins.seq _k (
      if skipReason != null
      then "with subtest(${py "${title}: not run in the VMs: ${skipReason}"}):\n    pass\n"
      else if kind == "run" && labOnlyHit != [] && replacement == null
      then fail "${what}: ${(builtins.head labOnlyHit).why}; skip it (vm_skip = \"why\" on the step, or [[skip]] in nixos-tests/vm-overrides.toml) or give the VMs their own command ([[replace]] there)"
      else "with subtest(${py fullTitle}):\n${indent "    " body}"
    );

  # ---- the configurations each client will be asked to switch to ------------
  configurationsOf = c:
    unique ([(initialConfiguration c)]
      ++ builtins.concatMap (s:
        if (s.do or "") == "edit" && (s.host or "") == c && (s.path or "") == "configuration.nix" && s ? content
        then [s.content]
        else [])
      steps);

  # The steps as the VMs run them (skipped ones are comments); json only when one reads it.
  translatedSteps = builtins.concatStringsSep "\n" (imap translateStep steps);
  usesJson = builtins.match ".*json\\.loads.*" translatedSteps != null;

  firstLine = builtins.head (builtins.filter builtins.isString (builtins.split "\n" text));

  testScript =
    builtins.seq (builtins.deepSeq [_top _lab _clients _fleet _hosts] null) ''
      # Generated by nixos-tests/lib/translate.nix from ${where}; do not edit.
      ${firstLine}
    ''
    + (
      if usesJson
      then "import json\n"
      else ""
    )
    + ''

      start_all()
      server.wait_for_unit("multi-user.target")

    ''
    + setupFleet
    + "\n"
    + translatedSteps
    + (
      let
        js = pendingBackground (builtins.length steps + 1);
      in
        if js == []
        then ""
        else "\nwith subtest(\"the scenario's end: background runs\"):\n${indent "    " (waitFor js)}"
    );
in {
  inherit name clients machines server serverAddress labAddress fleetDir testScript fleetToml prebuilt clientModule serverModule;
  # Every configuration.nix text a client meets during the scenario (the
  # initial one and each edit), so the test can pre-build their systems.
  configurations = builtins.listToAttrs (map (c: {
      name = c;
      value = configurationsOf c;
    })
    clients);
  keys = builtins.listToAttrs (map (c: {
      name = c;
      value = clientKey c;
    })
    clients);
  serverKey = keys.server;
}
