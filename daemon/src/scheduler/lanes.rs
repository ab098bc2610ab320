//! Per-host lanes and the rotation over them: who goes next.
//!
//! Each host has a lane with two queues, first attempts and retries, served
//! in turn so neither starves the other. Hosts with queued work sit in a
//! rotation (round-robin): a start looks only at those, not at every host
//! ever seen, and a host that may not start now (paused, at its limit) keeps
//! its place for the next round. Pure: no clock, no locks; the caller says
//! which hosts may start.

use std::collections::VecDeque;
use std::sync::Arc;

/// One host's queued ids.
#[derive(Debug, Default)]
struct Lane {
    fresh: VecDeque<Arc<str>>,
    retry: VecDeque<Arc<str>>,
    retry_turn: bool,
    /// In the rotation.
    active: bool,
    /// Ids taken off its fronts so far: a count of what was looked at
    /// from the front is good while this stays the same.
    pops: u64,
}

/// What one host has queued, as `Lanes::next` shows it to its caller.
pub struct Queued<'a> {
    /// First attempts, oldest first.
    pub fresh: &'a VecDeque<Arc<str>>,
    /// Retries, oldest first.
    pub retry: &'a VecDeque<Arc<str>>,
    /// See `Lane::pops`.
    pub pops: u64,
}

impl Lane {
    fn is_empty(&self) -> bool {
        self.fresh.is_empty() && self.retry.is_empty()
    }

    /// Fresh and retry take turns; either alone is served as it comes.
    fn pop(&mut self) -> Option<(Arc<str>, bool)> {
        let take_retry = (self.retry_turn && !self.retry.is_empty()) || self.fresh.is_empty();
        self.retry_turn = !take_retry;
        let id = if take_retry {
            self.retry.pop_front()
        } else {
            self.fresh.pop_front()
        };
        self.pops += u64::from(id.is_some());
        Some((id?, take_retry))
    }

    fn queued(&self) -> Queued<'_> {
        Queued {
            fresh: &self.fresh,
            retry: &self.retry,
            pops: self.pops,
        }
    }
}

/// Every host's lane and the rotation of those with queued work.
#[derive(Debug, Default)]
pub struct Lanes {
    lanes: Vec<Lane>,
    active: VecDeque<u32>,
}

impl Lanes {
    /// Adds a lane for a new host; returns its index.
    pub fn add(&mut self) -> u32 {
        self.lanes.push(Lane::default());
        (self.lanes.len() - 1) as u32
    }

    /// Whether `host`'s lane is in the rotation.
    pub fn is_active(&self, host: u32) -> bool {
        self.lanes[host as usize].active
    }

    /// Empties the lane of a dropped host (not in the rotation) for the
    /// next host to take its number.
    pub fn reset(&mut self, host: u32) {
        self.lanes[host as usize] = Lane::default();
    }

    /// Lanes `n` and up go (all reset); their memory is given back when
    /// the list shrank to less than half.
    pub fn truncate(&mut self, n: usize) {
        self.lanes.truncate(n);
        if self.lanes.capacity() > 2 * n.max(16) {
            self.lanes.shrink_to_fit();
        }
    }

    /// Gives back the room of queues that a burst grew and that are now
    /// mostly empty. Returns whether any was.
    pub fn shrink(&mut self) -> bool {
        let mut any = false;
        for lane in &mut self.lanes {
            for q in [&mut lane.fresh, &mut lane.retry] {
                if q.capacity() > 2 * q.len() + 1024 {
                    q.shrink_to_fit();
                    any = true;
                }
            }
        }
        any
    }

    /// Queues `id` on `host`'s lane (`retry`: the retry queue).
    pub fn push(&mut self, host: u32, id: Arc<str>, retry: bool) {
        let lane = &mut self.lanes[host as usize];
        if retry {
            lane.retry.push_back(id);
        } else {
            lane.fresh.push_back(id);
        }
        if !lane.active {
            lane.active = true;
            self.active.push_back(host);
        }
    }

    /// Takes the next id of `host`'s lane (fresh and retry in turn, as
    /// [`Lanes::next`] does), and whether it was a retry; for filling a
    /// batch once `next` chose the host. The rotation is left alone: an
    /// emptied lane leaves it when `next` meets it.
    pub fn pop(&mut self, host: u32) -> Option<(Arc<str>, bool)> {
        self.lanes[host as usize].pop()
    }

    /// Puts back an id just taken, at the front of its queue.
    pub fn push_front(&mut self, host: u32, id: Arc<str>, retry: bool) {
        let lane = &mut self.lanes[host as usize];
        if retry {
            lane.retry.push_front(id);
        } else {
            lane.fresh.push_front(id);
        }
        // The turn goes back to the queue it came from.
        lane.retry_turn = retry;
        if !lane.active {
            lane.active = true;
            self.active.push_back(host);
        }
    }

    /// The first id of each queue of each host with queued work: the ones
    /// that have waited longest in their queue.
    pub fn fronts(&self) -> impl Iterator<Item = &Arc<str>> {
        self.active.iter().flat_map(|h| {
            let lane = &self.lanes[*h as usize];
            lane.fresh.front().into_iter().chain(lane.retry.front())
        })
    }

    /// The first id of each queue of one host.
    pub fn fronts_of(&self, host: u32) -> impl Iterator<Item = &Arc<str>> {
        let lane = &self.lanes[host as usize];
        lane.fresh.front().into_iter().chain(lane.retry.front())
    }

    /// Pops the ids at the front of every active lane for which `live` is
    /// false (they would be skipped when popped anyway).
    pub fn prune_fronts(&mut self, live: impl Fn(&Arc<str>) -> bool) {
        for h in &self.active {
            let lane = &mut self.lanes[*h as usize];
            while lane.fresh.front().is_some_and(|id| !live(id)) {
                lane.fresh.pop_front();
                lane.pops += 1;
            }
            while lane.retry.front().is_some_and(|id| !live(id)) {
                lane.retry.pop_front();
                lane.pops += 1;
            }
        }
    }

    /// The next id to start, round-robin over the hosts with queued work
    /// for which `may_start` holds (shown what the host has queued), and
    /// whether it was a retry; `None` when none may start now.
    pub fn next(
        &mut self,
        mut may_start: impl FnMut(u32, Queued<'_>) -> bool,
    ) -> Option<(u32, Arc<str>, bool)> {
        for _ in 0..self.active.len() {
            let host = self.active.pop_front()?;
            let lane = &mut self.lanes[host as usize];
            if lane.is_empty() {
                lane.active = false;
                continue;
            }
            if !may_start(host, lane.queued()) {
                self.active.push_back(host);
                continue;
            }
            let id = lane.pop();
            // Back of the line while it has work: round-robin.
            if lane.is_empty() {
                lane.active = false;
            } else {
                self.active.push_back(host);
            }
            if let Some((id, retry)) = id {
                return Some((host, id, retry));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(lanes: &mut Lanes, n: usize, may: impl Fn(u32) -> bool) -> Vec<String> {
        (0..n)
            .filter_map(|_| lanes.next(|h, _| may(h)).map(|(_, id, _)| id.to_string()))
            .collect()
    }

    #[test]
    fn hosts_are_served_round_robin_whatever_their_backlog() {
        let mut l = Lanes::default();
        let (a, b) = (l.add(), l.add());
        for i in 0..100 {
            l.push(a, format!("a{i}").into(), false);
        }
        l.push(b, "b0".into(), false);
        l.push(b, "b1".into(), false);
        assert_eq!(ids(&mut l, 5, |_| true), ["a0", "b0", "a1", "b1", "a2"]);
    }

    #[test]
    fn first_attempts_and_retries_alternate() {
        let mut l = Lanes::default();
        let h = l.add();
        for i in 0..3 {
            l.push(h, format!("r{i}").into(), true);
            l.push(h, format!("f{i}").into(), false);
        }
        assert_eq!(
            ids(&mut l, 6, |_| true),
            ["f0", "r0", "f1", "r1", "f2", "r2"]
        );
    }

    #[test]
    fn a_host_that_may_not_start_keeps_its_place_and_blocks_no_one() {
        let mut l = Lanes::default();
        let (dead, live) = (l.add(), l.add());
        for i in 0..3 {
            l.push(dead, format!("d{i}").into(), false);
            l.push(live, format!("l{i}").into(), false);
        }
        assert_eq!(ids(&mut l, 3, |h| h == live), ["l0", "l1", "l2"]);
        assert_eq!(l.next(|h, _| h == live), None);
        // Once it may start again, its work is still queued, in order.
        assert_eq!(ids(&mut l, 4, |_| true), ["d0", "d1", "d2"]);
        assert_eq!(l.next(|_, _| true), None);
    }
}
