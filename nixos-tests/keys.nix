# Fixed SSH keys for the NixOS VM tests ONLY. They are public (committed), like
# nixpkgs' nixos/tests/ssh-keys.nix, so the tests can pin the server's host key
# and register each client's key at evaluation time. Never use them elsewhere.
# Clients get keys in the order of the scenario's [lab] clients list.
{
  server = {
    public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMGQC1aCaZX2zZqN9X6F3k//2aO41CBiBRm3y87h9W3Q tiffin-test-server (TEST ONLY, published)";
    private = ''
      -----BEGIN OPENSSH PRIVATE KEY-----
      b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
      QyNTUxOQAAACDBkAtWgmmV9s2ajfV+hd5P/9mjuNQgYgUZt8vO4fVt0AAAALBLI58fSyOf
      HwAAAAtzc2gtZWQyNTUxOQAAACDBkAtWgmmV9s2ajfV+hd5P/9mjuNQgYgUZt8vO4fVt0A
      AAAEAjMgRWxR4QNigxinnqTleFpZja9pptj3Clc4uPzNNKksGQC1aCaZX2zZqN9X6F3k//
      2aO41CBiBRm3y87h9W3QAAAAKXRpZmZpbi10ZXN0LXNlcnZlciAoVEVTVCBPTkxZLCBwdW
      JsaXNoZWQpAQIDBA==
      -----END OPENSSH PRIVATE KEY-----
    '';
  };
  client1 = {
    public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC+j6UYSbsC3Bd2MzqpCYWcpwXcxv4HlyjlkvDV+F84e tiffin-test-client1 (TEST ONLY, published)";
    private = ''
      -----BEGIN OPENSSH PRIVATE KEY-----
      b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
      QyNTUxOQAAACAvo+lGEm7AtwXdjM6qQmFnKcF3Mb+B5co5ZLw1fhfOHgAAALAedV5vHnVe
      bwAAAAtzc2gtZWQyNTUxOQAAACAvo+lGEm7AtwXdjM6qQmFnKcF3Mb+B5co5ZLw1fhfOHg
      AAAECFlIsP4Igyn7qeZgnR/rBAfB9AVngRmdL6MBRw/DodxC+j6UYSbsC3Bd2MzqpCYWcp
      wXcxv4HlyjlkvDV+F84eAAAAKnRpZmZpbi10ZXN0LWNsaWVudDEgKFRFU1QgT05MWSwgcH
      VibGlzaGVkKQECAw==
      -----END OPENSSH PRIVATE KEY-----
    '';
  };
  client2 = {
    public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHg7br2ivh8NxLg4w57YLm21uPEhqWL4F5UT90nIOuek tiffin-test-client2 (TEST ONLY, published)";
    private = ''
      -----BEGIN OPENSSH PRIVATE KEY-----
      b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
      QyNTUxOQAAACB4O269or4fDcS4OMOe2C5ttbjxIali+BeVE/dJyDrnpAAAALCKPAi7ijwI
      uwAAAAtzc2gtZWQyNTUxOQAAACB4O269or4fDcS4OMOe2C5ttbjxIali+BeVE/dJyDrnpA
      AAAEAVDWuAL0QarDMOJxum4IRHBmI5I8C0sah/+O9rIqUfh3g7br2ivh8NxLg4w57YLm21
      uPEhqWL4F5UT90nIOuekAAAAKnRpZmZpbi10ZXN0LWNsaWVudDIgKFRFU1QgT05MWSwgcH
      VibGlzaGVkKQECAw==
      -----END OPENSSH PRIVATE KEY-----
    '';
  };
  client3 = {
    public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMQRjP6o4dGjKPSjMQUR63sk3hzHsaUq72Wffa2kmD0A tiffin-test-client3 (TEST ONLY, published)";
    private = ''
      -----BEGIN OPENSSH PRIVATE KEY-----
      b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
      QyNTUxOQAAACDEEYz+qOHRoyj0ozEFEet7JN4cx7GlKu9ln32tpJg9AAAAALDtAbNC7QGz
      QgAAAAtzc2gtZWQyNTUxOQAAACDEEYz+qOHRoyj0ozEFEet7JN4cx7GlKu9ln32tpJg9AA
      AAAEDOIEN9cG2YdTXFn9OSoJeAMr7wGXl6uBZ2ms71fF/RJ8QRjP6o4dGjKPSjMQUR63sk
      3hzHsaUq72Wffa2kmD0AAAAAKnRpZmZpbi10ZXN0LWNsaWVudDMgKFRFU1QgT05MWSwgcH
      VibGlzaGVkKQECAw==
      -----END OPENSSH PRIVATE KEY-----
    '';
  };
  client4 = {
    public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILZK4LmH+HdcD4sQEX4Gdv+AuRVDlj1PhE0natLihQXm tiffin-test-client4 (TEST ONLY, published)";
    private = ''
      -----BEGIN OPENSSH PRIVATE KEY-----
      b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
      QyNTUxOQAAACC2SuC5h/h3XA+LEBF+Bnb/gLkVQ5Y9T4RNJ2rS4oUF5gAAALAY5nfOGOZ3
      zgAAAAtzc2gtZWQyNTUxOQAAACC2SuC5h/h3XA+LEBF+Bnb/gLkVQ5Y9T4RNJ2rS4oUF5g
      AAAEDguhtSTiI4sSpFTqm0DLcPkZxkPe/a0/caTh2JbeI+DbZK4LmH+HdcD4sQEX4Gdv+A
      uRVDlj1PhE0natLihQXmAAAAKnRpZmZpbi10ZXN0LWNsaWVudDQgKFRFU1QgT05MWSwgcH
      VibGlzaGVkKQECAw==
      -----END OPENSSH PRIVATE KEY-----
    '';
  };
  client5 = {
    public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMaVJOohfrb4GuqvT1ydsSTVK1E7aftgo1lpx1b7lzSY tiffin-test-client5 (TEST ONLY, published)";
    private = ''
      -----BEGIN OPENSSH PRIVATE KEY-----
      b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
      QyNTUxOQAAACDGlSTqIX62+Brqr09cnbEk1StRO2n7YKNZacdW+5c0mAAAALB/H1yafx9c
      mgAAAAtzc2gtZWQyNTUxOQAAACDGlSTqIX62+Brqr09cnbEk1StRO2n7YKNZacdW+5c0mA
      AAAEAm37bN8paQgvAySePjGkhHUs8U6G1YAttLnHHrks8DMcaVJOohfrb4GuqvT1ydsSTV
      K1E7aftgo1lpx1b7lzSYAAAAKnRpZmZpbi10ZXN0LWNsaWVudDUgKFRFU1QgT05MWSwgcH
      VibGlzaGVkKQECAw==
      -----END OPENSSH PRIVATE KEY-----
    '';
  };
  # Nix signing keys for the prebuilt-* VM tests ONLY (TEST keys, published
  # like the SSH keys above; made with `nix key generate-secret --key-name
  # fleet-test-1` and `nix key convert-secret-to-public`). The server VM signs
  # with `fleet` (or `wrong`, in prebuilt-wrong-key); every client VM trusts
  # only fleet's public half (services.tiffin.client.cachePublicKey).
  cache = {
    fleet = {
      secret = "fleet-test-1:3m+RrEyXmU+w454b6OqB/CSGz0K1pUAkpLiV9BooibJrX1EO3p4cX/wD+Ff1yQ5tqK24hYcYra7KyuEp9WYLCw==";
      public = "fleet-test-1:a19RDt6eHF/8A/hX9ckObaituIWHGK2uysrhKfVmCws=";
    };
    wrong = {
      secret = "wrong-test-1:lMpVT2c3jB6s/+N1F8TCT7ya7/1NGisfwuLlyg7SPggbe6/Nj0joK4i3fmaHsHL+xQ+w7QgHTPN4+0/I5/Dg5Q==";
      public = "wrong-test-1:G3uvzY9I6CuIt35mh7By/sUPsO0IB0zzePtPyOfw4OU=";
    };
  };
}
