//! The open-file limit. systemd starts services with a soft `RLIMIT_NOFILE` of 1024 and a hard
//! limit of 524288 (systemd.exec(5), `LimitNOFILE=`), and expects a program that needs more to
//! raise its own soft limit; one sidecar process holds a descriptor per connection of every
//! workload it serves, so `ward` raises the soft limit to the hard one at start. The result sizes
//! the connection budget (`ward_proxy::listener::FdBudget`).

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// The soft limit used when the hard limit is unlimited (no kernel allows that for descriptors,
/// but the type does): Linux's default `fs.nr_open`.
const UNLIMITED_SOFT: u64 = 1 << 20;

/// The soft limit before and after [`raise`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NofileLimit {
    /// The soft limit the process started with (`None`: unlimited).
    pub(crate) before: Option<u64>,
    /// The soft limit now in force (`None`: unlimited).
    pub(crate) now: Option<u64>,
}

impl NofileLimit {
    /// The limit in force as a number of descriptors.
    pub(crate) fn effective(&self) -> u64 {
        self.now.unwrap_or(UNLIMITED_SOFT)
    }
}

/// The soft limit to set, given the current limits; `None` when it is already as high as it may
/// go. Pure.
fn target(current: Rlimit) -> Option<u64> {
    let soft = current.current?;
    let hard = current.maximum.unwrap_or(UNLIMITED_SOFT);
    (soft < hard).then_some(hard)
}

fn shown(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
}

/// Raise the soft open-file limit to the hard limit, and log what it was and what it is now.
pub(crate) fn raise() -> NofileLimit {
    let current = getrlimit(Resource::Nofile);
    let before = current.current;
    let Some(want) = target(current) else {
        tracing::debug!(
            soft = %shown(before),
            hard = %shown(current.maximum),
            "open-file limit already at the hard limit"
        );
        return NofileLimit {
            before,
            now: before,
        };
    };
    let new = Rlimit {
        current: Some(want),
        maximum: current.maximum,
    };
    match setrlimit(Resource::Nofile, new) {
        Ok(()) => {
            tracing::info!(
                from = %shown(before),
                to = want,
                "raised the soft open-file limit (RLIMIT_NOFILE) to the hard limit"
            );
            NofileLimit {
                before,
                now: Some(want),
            }
        }
        Err(e) => {
            tracing::warn!(
                soft = %shown(before),
                hard = %shown(current.maximum),
                error = %e,
                "cannot raise the soft open-file limit (RLIMIT_NOFILE); keeping it"
            );
            NofileLimit {
                before,
                now: before,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(soft: Option<u64>, hard: Option<u64>) -> Rlimit {
        Rlimit {
            current: soft,
            maximum: hard,
        }
    }

    #[test]
    fn raises_the_soft_limit_to_the_hard_one() {
        assert_eq!(target(lim(Some(1024), Some(524_288))), Some(524_288));
        assert_eq!(target(lim(Some(4096), Some(4096))), None);
        assert_eq!(target(lim(None, None)), None, "already unlimited");
        assert_eq!(target(lim(Some(1024), None)), Some(UNLIMITED_SOFT));
    }
}
