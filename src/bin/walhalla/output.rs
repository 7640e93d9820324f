//! What a command prints on standard output.

/// Writes a command's output to stdout. A reader that stopped early (`walhalla list | head`)
/// has what it wanted: the closed pipe ends the output quietly instead of a panic or an error.
pub fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("write to standard output"))
        }
        _ => Ok(()),
    }
}

/// A report as pretty JSON, with its newline.
pub fn pretty_json(value: &impl serde::Serialize) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}
