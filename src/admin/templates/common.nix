# Settings shared by every host of the fleet (hosts/<name>/common links here).
{lib, ...}: {
  # Key logins only: nixpkgs' default would also accept passwords.
  services.openssh.enable = true;
  services.openssh.settings.PasswordAuthentication = lib.mkDefault false;
  services.openssh.settings.KbdInteractiveAuthentication = lib.mkDefault false;
}
