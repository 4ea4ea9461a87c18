//! Writing to stdout without panicking when the reader goes away
//! (`ds4 gguf inspect big.gguf | head`).

use std::io::{ErrorKind, Write};

/// Prints `text` to stdout; a closed pipe ends output quietly.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
