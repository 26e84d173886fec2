# The one place the tests meet nixpkgs' NixOS test framework
# (nixos/lib/testing, through pkgs.testers.runNixOSTest): settings shared by
# every tiffin VM test go here.
{pkgs}: test:
pkgs.testers.runNixOSTest {
  imports = [test];
  # Four VMs and real rebuilds: allow more than the default hour on slow builders.
  globalTimeout = 2 * 60 * 60;
}
