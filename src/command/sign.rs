//! `tiffin sign`: on an admin's machine, sign what the hosts may apply (a staged release's statement, a renewal, a rotation of the admins' keys).

use std::path::PathBuf;

use super::RepoArgs;
use crate::admin::sign::{self, Signed, Signer};
use crate::command::error::{Error, Exit};
use crate::core::names::HostName;
use crate::core::settings::Interval;

pub const LONG_ABOUT: &str = "Sign what the hosts of a signed fleet may apply, with your SSH key.

In a fleet whose fleet.toml has a [trust] section, a host applies a release only with a
statement signed by `threshold` of the admins' keys: its name, the release id (the
sha256 of its MANIFEST), its seq and an expiry. `tiffin publish` stages a new release
and leaves its MANIFEST in <state_dir>/to-sign/<host>.MANIFEST; it becomes current once
the repository holds a statement for it and publish runs again. The server never holds a
key.

  tiffin sign --key ~/.ssh/id_ed25519 to-sign/web-1.MANIFEST
      checks that the release's config/, files/ and [apply] are what this checkout
      gives web-1 (a prebuilt release's closure, cache/, is the build host's), then
      writes signed/web-1.statement and signed/web-1.sig. When the statement already
      names that release, your signature is added to it (k of n).
  tiffin sign --key ~/.ssh/id_ed25519 --cosign web-1
      adds your signature to web-1's statement as it is.
  tiffin sign --key ~/.ssh/id_ed25519 --renew web-1 [--expires 30d]
      the same release with a later expiry (hosts do not apply it again); the other
      signers then --cosign.
  tiffin sign --key ~/.ssh/id_ed25519 --root
      signs fleet.toml's [trust] (version n) as the rotation from root n-1 into
      trust/root-<n>.toml and .sig: the threshold of the old keys and of the new keys
      must each sign it.

--key takes an unencrypted OpenSSH private key (ed25519), or a .pub whose private key
is in ssh-agent or on a FIDO token (sk-ssh-ed25519@openssh.com): then `ssh-keygen -Y
sign` signs, asking for a touch or a passphrase. Signatures are SSHSIG, namespace
tiffin-statement (tiffin-root for roots): `ssh-keygen -Y verify` checks them too.
Commit signed/ and trust/ with the hosts; see docs/signing.md.";

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Your key: an OpenSSH private key file, or a .pub whose private key is in ssh-agent or on a FIDO token
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// How long the statement is valid (default: fleet.toml [trust] expiry, 30d)
    #[arg(long, value_name = "DURATION")]
    pub expires: Option<Interval>,
    /// Add your signature to the statements of these hosts as they are
    #[arg(long, conflicts_with_all = ["renew", "root"])]
    pub cosign: bool,
    /// Re-sign the signed release of these hosts with a new expiry
    #[arg(long, conflicts_with = "root")]
    pub renew: bool,
    /// Sign fleet.toml's [trust] as a rotation of the admins' keys
    #[arg(long)]
    pub root: bool,
    /// Staged MANIFESTs to sign, or with --cosign/--renew the hosts
    #[arg(required_unless_present = "root", value_name = "MANIFEST|HOST")]
    pub targets: Vec<String>,
}

pub fn run(args: &Args) -> Result<Exit, Error> {
    let fleet = args.repo.load()?;
    let signer = Signer::for_key(&args.key);
    let fail = |e: sign::SignError| Error::Failed(e.to_string());
    if args.root {
        let (path, n) = sign::sign_root(&fleet, &signer).map_err(fail)?;
        println!("{}: signed ({n} signature(s))", path.display());
        return Ok(Exit::Ok);
    }
    let settings = sign::trust_of(&fleet).map_err(fail)?;
    let lifetime = args.expires.unwrap_or(settings.expiry);
    let expires = crate::core::clock::now() + lifetime.0;
    for target in &args.targets {
        let signed = if args.cosign || args.renew {
            let host: HostName = target
                .parse()
                .map_err(|e| Error::Usage(format!("{target}: {e}")))?;
            if args.cosign {
                sign::cosign(&fleet, &host, &signer)
            } else {
                sign::renew(&fleet, &host, &signer, expires)
            }
        } else {
            sign::sign_manifest(&fleet, &PathBuf::from(target), &signer, expires)
        };
        said(&signed.map_err(fail)?);
    }
    Ok(Exit::Ok)
}

fn said(s: &Signed) {
    let more = if (s.signatures as u32) < s.threshold {
        format!(
            "; {} more needed (`tiffin sign --cosign {}`)",
            s.threshold - s.signatures as u32,
            s.host
        )
    } else {
        "; publish it: `tiffin publish` on the server".into()
    };
    println!(
        "{}: release #{} {} signed until {} ({} of {} signature(s){more})",
        s.host,
        s.seq,
        s.release.short(),
        s.expires,
        s.signatures,
        s.threshold
    );
}
