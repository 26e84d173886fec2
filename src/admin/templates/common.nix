# Settings shared by every host of the fleet (hosts/<name>/common links here).
{...}: {
  services.openssh.enable = true;
}
