# @HOST@: its NixOS configuration, built on the host by `tiffin pull`.
# Files under hosts/@HOST@/files/ are copied to / on the host, modes kept,
# and never enter the Nix store: put secrets there, not here.
{...}: {
  imports = [./common];

  networking.hostName = "@HOST@";
  nixpkgs.hostPlatform = "x86_64-linux";
  system.stateVersion = "25.05";
}
