//! Compaction: the live jobs of an old spool segment that holds back
//! deletion are copied forward, so the segment can go.

use super::entry::{JobRef, Phase};
use super::Engine;
use crate::clock::now_ms;
use crate::shutdown::Shutdown;
use crate::spool::{Kind, Outcome};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

impl Engine {
    /// Looks for a segment to compact once a second until draining begins.
    pub async fn run_compaction(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => self.compact(),
                _ = shutdown.draining() => return,
            }
        }
    }

    /// Re-appends the live jobs of the spool's oldest segment when few are
    /// left in it, so the segment can be deleted. Called from time to time.
    pub fn compact(&self) {
        let Some(spool) = &self.spool else { return };
        let Some(seg) = spool.compaction_candidate() else {
            return;
        };
        {
            let futile = self
                .futile_compaction
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if matches!(*futile, Some((s, at)) if s == seg && at.elapsed() < Duration::from_secs(60))
            {
                return;
            }
        }
        let jobs = spool.jobs_in(seg);
        let mut st = self.lock();
        let mut n = 0;
        let mut busy = 0;
        let mut cold = 0;
        for (job, loc) in jobs {
            let Some(e) = st.entries.get_mut(&job.key) else {
                // A cold request stays where its lane's list points.
                if st.cold.contains(&job.key) {
                    cold += 1;
                }
                continue;
            };
            // Only the job's latest record matters; older copies are dead weight.
            if e.job.loc() != Some(loc) {
                continue;
            }
            let kind = match e.phase {
                Phase::Dead => Kind::Dead,
                Phase::Expired => Kind::Expired,
                Phase::Delivered => continue,
                // Its delivery task may be about to read the old record:
                // moving it now could make that read fail. Next round.
                Phase::InFlight => {
                    busy += 1;
                    continue;
                }
                _ => Kind::Retry,
            };
            let state = Outcome {
                kind,
                attempts: e.attempts,
                next_ms: if e.phase == Phase::Waiting {
                    e.next_ms
                } else {
                    0
                },
                status: e.last_status,
                error: e.last_error.clone(),
                snippet: e.snippet.as_deref().map(Into::into),
                at_ms: now_ms(),
            };
            // Written under the state lock, so no outcome of this job can be
            // ordered before its copy.
            let moved = spool.rewrite(&job, state, Some(loc));
            e.job = match &e.job {
                JobRef::Hot(j, _) => JobRef::Hot(j.clone(), moved),
                _ => JobRef::Disk(moved),
            };
            n += 1;
        }
        spool.retire(seg);
        drop(st);
        debug!(
            segment = seg,
            jobs = n,
            busy,
            cold,
            "compacted spool segment"
        );
        if n == 0 && busy == 0 {
            if cold == 0 {
                warn!(
                    segment = seg,
                    "spool segment counted live jobs the scheduler does not hold; left in place"
                );
            }
            *self
                .futile_compaction
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some((seg, Instant::now()));
        }
    }
}
