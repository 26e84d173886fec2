# @HOST@: its NixOS configuration, built on the host by `tiffin pull`.
# Files under hosts/@HOST@/files/ are copied to / on the host, modes kept,
# and never enter the Nix store: put secrets there, not here.
# The tiffin client comes from the flake (templates/flake.nix) and
# common/tiffin.nix; nothing here is needed for the host to keep pulling.
{...}: {
  imports = [./common];

  networking.hostName = "@HOST@";
  nixpkgs.hostPlatform = "x86_64-linux";
  system.stateVersion = "26.05";
}
