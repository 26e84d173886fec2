//! SIGINT, SIGTERM and SIGHUP become a flag that every wait in the lab checks, so the lab always tears itself down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a terminating signal arrived. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    flag: Arc<AtomicBool>,
}

impl Interrupt {
    /// Routes SIGINT, SIGTERM and SIGHUP to the flag instead of killing the process. A second
    /// signal, while the lab already tears down, ends the process at once (exit 130); what is
    /// left then is on record for `tiffin-lab down`.
    pub fn install() -> std::io::Result<Interrupt> {
        let me = Interrupt::default();
        for signal in [
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ] {
            // Registered first, so it sees the flag as it was before this signal.
            signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&me.flag))?;
            signal_hook::flag::register(signal, Arc::clone(&me.flag))?;
        }
        Ok(me)
    }

    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}
