//! The open-files limit: every connection a service holds is a file descriptor.
//!
//! Container runtimes start processes with a low soft limit and a high hard one: containerd 2
//! (current Docker, and Kubernetes nodes on containerd 2) gives 1,024 soft. A gateway stopped
//! there near a thousand sockets, failing every `accept` after that. A process may raise its own
//! soft limit up to the hard limit without privileges, so [`raise_open_files_limit`] does that at
//! start-up and [`raise_and_log`] says what it got, warning when even the hard limit is low (the
//! hard limit is the operator's: compose `ulimits`, systemd `LimitNOFILE`, the container
//! runtime's defaults; docs/deploy.md says what to set).

use rlimit::Resource;

/// Below this many files a service can hold only that many connections, less what it uses
/// itself: worth a warning with what to change.
pub const LOW_OPEN_FILES: u64 = 65_536;

/// The open-files limit before and after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit: the most the soft limit can be raised to without privileges.
    pub hard: u64,
}

/// Why the limit could not be read or raised.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("cannot read the open-files limit (RLIMIT_NOFILE): {0}")]
    Read(#[source] std::io::Error),
    #[error(
        "cannot raise the open-files soft limit from {soft} to the hard limit {hard}: {source}; \
         the process keeps {soft}"
    )]
    Raise {
        soft: u64,
        hard: u64,
        #[source]
        source: std::io::Error,
    },
}

/// Raises the soft open-files limit to the hard limit (a no-op when they are equal).
pub fn raise_open_files_limit() -> Result<OpenFiles, LimitError> {
    let (before, hard) = Resource::NOFILE.get().map_err(LimitError::Read)?;
    if before < hard {
        Resource::NOFILE
            .set(hard, hard)
            .map_err(|source| LimitError::Raise {
                soft: before,
                hard,
                source,
            })?;
    }
    let (soft, hard) = Resource::NOFILE.get().map_err(LimitError::Read)?;
    Ok(OpenFiles { before, soft, hard })
}

/// [`raise_open_files_limit`], logged: the value in force at `info`, a warning when it stays
/// below [`LOW_OPEN_FILES`] or could not be raised. Never fails: a service still runs with the
/// limit it has. Call it once logging is set up, before serving.
pub fn raise_and_log() -> Option<OpenFiles> {
    match raise_open_files_limit() {
        Ok(files) => {
            tracing::info!(
                soft = files.soft,
                hard = files.hard,
                started_with = files.before,
                "open-files limit"
            );
            if files.soft < LOW_OPEN_FILES {
                tracing::warn!(
                    soft = files.soft,
                    "the open-files limit caps this process near {} connections; raise the hard \
                     limit (compose `ulimits: nofile`, systemd `LimitNOFILE`, the container \
                     runtime's default) to {LOW_OPEN_FILES} or more",
                    files.soft
                );
            }
            Some(files)
        }
        Err(e) => {
            tracing::warn!(error = %e, "open-files limit");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs in its own process under nextest; under `cargo test` it lowers and then restores the
    /// limit of the shared process, ending at the hard limit, never below where it started.
    #[test]
    fn a_lowered_soft_limit_is_raised_to_the_hard_limit() {
        let (_, hard) = Resource::NOFILE.get().expect("getrlimit");
        let low = hard.min(512);
        Resource::NOFILE
            .set(low, hard)
            .expect("lower the soft limit");

        let files = raise_open_files_limit().expect("raise");

        assert_eq!(files.before, low);
        assert_eq!(files.soft, hard);
        assert_eq!(files.hard, hard);
        assert_eq!(Resource::NOFILE.get().expect("getrlimit"), (hard, hard));
        // Once raised, raising again changes nothing.
        let again = raise_open_files_limit().expect("raise again");
        assert_eq!(again.before, hard);
        assert_eq!(again.soft, hard);
    }
}
