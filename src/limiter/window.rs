//! One limit's sliding window, exact in the direction that matters: never more than the
//! limit in any interval of the window's length.
//!
//! # Algorithm: sub-window slots, each remembering its last call
//! The window `W` is cut into [`SLOTS`] slots of `g = ⌈W / SLOTS⌉` ms, aligned to the
//! epoch. Admitted cost is added to the slot of its instant, and each slot keeps the
//! instant of its latest admitted call, `last`. A slot counts while `now < last + W`.
//!
//! - **Never over the limit.** A call admitted at `t` is in a slot whose `last ≥ t`, so it
//!   counts for at least `(t, t + W)`: any interval of length `W` that ends with an
//!   admitted call sees every earlier admitted call of that interval, and the call was
//!   admitted only if they and it fit. Whatever the phase against slot boundaries.
//! - **Never late by more than `g`.** A call's cost comes back at its slot's `last + W`,
//!   at most `g` after its own `t + W` (the calls of one slot come back together, with
//!   the slot's latest). With no admitted call for `W`, the whole budget is back, exactly.
//! - `retry_after` is the instant the oldest slots that must go have gone: enough, and at
//!   most `W` (every `last ≤ now`). `reset` is the newest slot's `last + W`, at most `W`
//!   ahead. `remaining` is the limit less what counts now: a call of that cost is admitted.
//!
//! Memory: a slot is 16 bytes and only slots holding cost exist, so one limit holds at
//! most `min(limit, SLOTS + 1)` slots: ≤ 976 bytes of slots plus the `Vec`'s 24, whatever
//! the rate.
use std::collections::VecDeque;

/// Slots per window: the precision is `W / SLOTS` (1 s for a minute), in the later
/// direction only.
pub const SLOTS: i64 = 60;

/// The slot length for a window of `window_ms` (at least 1 ms).
pub fn slot_ms(window_ms: i64, slots: i64) -> i64 {
    (window_ms.max(1) + slots - 1) / slots
}

/// Cost admitted within one slot, and when its latest call was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The latest admitted call of this slot (its slot index is `last / g`).
    pub last: i64,
    pub cost: u64,
}

/// The live slots of one limit, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    window_ms: i64,
    slot_ms: i64,
    slots: VecDeque<Slot>,
    /// The sum of the slots' cost.
    used: u64,
}

impl Window {
    /// A window of `window_ms` cut into `slots` slots.
    pub fn new(window_ms: i64, slots: i64) -> Self {
        Window {
            window_ms: window_ms.max(1),
            slot_ms: slot_ms(window_ms, slots.max(1)),
            slots: VecDeque::new(),
            used: 0,
        }
    }

    /// Rebuilt from stored slots (any order; entries that share a slot are merged).
    pub fn from_slots(window_ms: i64, slots: i64, stored: impl IntoIterator<Item = Slot>) -> Self {
        let mut w = Window::new(window_ms, slots);
        let mut all: Vec<Slot> = stored.into_iter().filter(|s| s.cost > 0).collect();
        all.sort_by_key(|s| s.last);
        for s in all {
            w.add(s.last, s.cost);
        }
        w
    }

    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    pub fn slot_ms(&self) -> i64 {
        self.slot_ms
    }

    /// The live slots, oldest first.
    pub fn slots(&self) -> impl DoubleEndedIterator<Item = &Slot> {
        self.slots.iter()
    }

    /// Drops the slots that no longer count at `now`. A window of another length (the
    /// limit was changed) keeps its slots: a slot's last call is as true under any window,
    /// so they count on against the new length.
    pub fn expire(&mut self, now: i64, window_ms: i64, slots: i64) {
        let window_ms = window_ms.max(1);
        if self.window_ms != window_ms || self.slot_ms != slot_ms(window_ms, slots.max(1)) {
            self.window_ms = window_ms;
            self.slot_ms = slot_ms(window_ms, slots.max(1));
            // Slots of another length may now be out of order by slot; by `last` they are
            // not, which is all expiry needs.
        }
        while let Some(front) = self.slots.front() {
            if front.last + self.window_ms > now {
                break;
            }
            self.used -= front.cost;
            self.slots.pop_front();
        }
    }

    /// What counts now (after [`expire`](Self::expire)).
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Whether `cost` fits now (after `expire`).
    pub fn admits(&self, limit: u64, cost: u64) -> bool {
        self.used.saturating_add(cost) <= limit
    }

    /// Spends `cost` at `now`.
    pub fn spend(&mut self, now: i64, cost: u64) {
        self.add(now, cost);
    }

    fn add(&mut self, at: i64, cost: u64) {
        if cost == 0 {
            return;
        }
        self.used = self.used.saturating_add(cost);
        let g = self.slot_ms.max(1);
        let slot = at.div_euclid(g);
        match self.slots.back_mut() {
            // The same slot, or a clock that stepped back: fold into the newest slot,
            // which then counts at least as long as the call would have.
            Some(back) if back.last.div_euclid(g) >= slot => {
                back.cost = back.cost.saturating_add(cost);
                back.last = back.last.max(at);
            }
            _ => {
                // A key with one call holds one slot, not the four a first push reserves
                // (48 bytes a bucket at a million keys); a busy one grows as before.
                if self.slots.capacity() == 0 {
                    self.slots.reserve_exact(1);
                }
                self.slots.push_back(Slot { last: at, cost })
            }
        }
    }

    /// Takes up to `units` back out of the slot a spend at `at` went into (a reservation
    /// settled for less), if that spend still counts at `now`, so the units come back when
    /// they would have had the call cost less. That slot is the one of `at`'s own slot
    /// index; failing that (the spend joined a newer slot because the clock had stepped
    /// back), the first whose latest call is at or after `at` (a slot's `last` only
    /// grows). Returns the units taken back.
    pub fn give_back(&mut self, at: i64, units: u64, now: i64) -> u64 {
        if units == 0 || now >= at.saturating_add(self.window_ms) {
            // Gone from the window already: nothing is held any more.
            return 0;
        }
        let g = self.slot_ms.max(1);
        let own = self
            .slots
            .iter()
            .position(|s| s.last.div_euclid(g) == at.div_euclid(g) && s.last >= at);
        let Some(i) = own.or_else(|| self.slots.iter().position(|s| s.last >= at)) else {
            return 0;
        };
        let slot = &mut self.slots[i];
        let taken = units.min(slot.cost);
        slot.cost -= taken;
        self.used -= taken;
        if slot.cost == 0 {
            self.slots.remove(i);
        }
        taken
    }

    /// Spends up to `units` more at `now` (a reservation settled for more), as far as
    /// `ceiling` (the limit plus an overdraft) allows; never refuses. Returns what it spent.
    pub fn charge_up_to(&mut self, now: i64, units: u64, ceiling: u64) -> u64 {
        let n = units.min(ceiling.saturating_sub(self.used));
        self.add(now, n);
        n
    }

    /// Budget left now (after `expire`).
    pub fn remaining(&self, limit: u64) -> u64 {
        limit.saturating_sub(self.used)
    }

    /// When the whole budget is back if nothing more is spent.
    pub fn reset(&self, now: i64) -> i64 {
        self.slots
            .back()
            .map_or(now, |s| (s.last + self.window_ms).max(now))
    }

    /// The earliest instant ≥ `now` at which `cost` fits (after `expire`), or `None` if
    /// never (cost > limit).
    pub fn next_admission(&self, now: i64, limit: u64, cost: u64) -> Option<i64> {
        if cost > limit {
            return None;
        }
        let mut left = self.used;
        if left + cost <= limit {
            return Some(now);
        }
        for s in &self.slots {
            left -= s.cost;
            if left + cost <= limit {
                return Some((s.last + self.window_ms).max(now));
            }
        }
        Some(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: i64 = 60_000;

    fn window() -> Window {
        Window::new(W, SLOTS)
    }

    #[test]
    fn a_boundary_burst_is_not_admitted_twice() {
        // 6 per 2 s: 6 late in one aligned window, then none early in the next.
        let (w_ms, limit) = (2_000, 6);
        let mut w = Window::new(w_ms, SLOTS);
        for i in 0..6 {
            let t = 1_999 - i;
            w.expire(t, w_ms, SLOTS);
            assert!(w.admits(limit, 1));
            w.spend(t, 1);
        }
        for t in [2_000, 2_500, 3_900, 3_998] {
            w.expire(t, w_ms, SLOTS);
            assert!(!w.admits(limit, 1), "admitted at {t}");
        }
        w.expire(3_999, w_ms, SLOTS);
        assert!(
            w.admits(limit, 6),
            "all back one window after the last call"
        );
    }

    #[test]
    fn retry_after_is_enough_and_at_most_the_window() {
        let mut w = window();
        let limit = 10;
        for i in 0..10 {
            let t = 1_000 + i * 5_000;
            w.expire(t, W, SLOTS);
            w.spend(t, 1);
        }
        let now = 50_000;
        w.expire(now, W, SLOTS);
        assert_eq!(w.remaining(limit), 0);
        let at = w.next_admission(now, limit, 3).unwrap();
        assert!(at - now <= W);
        assert_eq!(at, 11_000 + W, "the third oldest call's slot has gone");
        let mut later = w.clone();
        later.expire(at, W, SLOTS);
        assert!(later.admits(limit, 3));
        let mut before = w.clone();
        before.expire(at - 1, W, SLOTS);
        assert!(!before.admits(limit, 3));
        assert_eq!(w.reset(now), 46_000 + W);
        assert_eq!(w.next_admission(now, limit, 11), None);
    }

    #[test]
    fn memory_is_bounded_by_the_slots() {
        let mut w = window();
        for t in (0..10 * W).step_by(7) {
            w.expire(t, W, SLOTS);
            if w.admits(u64::MAX, 1) {
                w.spend(t, 1);
            }
        }
        assert!(w.slots().count() as i64 <= SLOTS + 1);
        let mut small = window();
        for t in (0..W).step_by(100) {
            small.expire(t, W, SLOTS);
            if small.admits(5, 1) {
                small.spend(t, 1);
            }
        }
        assert!(small.slots().count() <= 5);
    }

    #[test]
    fn a_settled_reservation_gives_back_into_its_own_slot_or_charges_up_to_the_ceiling() {
        let mut w = window();
        w.spend(1_000, 5); // another call
        w.spend(10_000, 100); // the reservation
        w.spend(30_000, 7); // a later call
        w.expire(40_000, W, SLOTS);
        assert_eq!(w.give_back(10_000, 70, 40_000), 70);
        assert_eq!(w.used(), 5 + 30 + 7);
        // The 30 left count as long as the reservation's slot did: gone at 70,000.
        w.expire(69_999, W, SLOTS);
        assert_eq!(w.used(), 30 + 7);
        w.expire(70_000, W, SLOTS);
        assert_eq!(w.used(), 7);
        // Once its slot is gone, nothing is given back (the later call keeps its cost).
        assert_eq!(w.give_back(10_000, 30, 70_000), 0);
        assert_eq!(w.used(), 7);
        // More than reserved: charged at now, never past the ceiling.
        assert_eq!(w.charge_up_to(70_000, 50, 20), 13);
        assert_eq!(w.used(), 20);
        assert_eq!(w.charge_up_to(70_001, 5, 20), 0);
        // Giving back more than the slot holds takes only what is there; an emptied slot goes.
        let mut w = window();
        w.spend(5_000, 3);
        assert_eq!(w.give_back(5_000, 10, 6_000), 3);
        assert_eq!((w.used(), w.slots().count()), (0, 0));
    }

    #[test]
    fn a_changed_window_keeps_its_slots_and_stored_slots_round_trip() {
        let mut w = window();
        w.spend(10, 4);
        w.spend(5_000, 2);
        let back = Window::from_slots(W, SLOTS, w.slots().copied().rev());
        assert_eq!(back, w);
        // Longer: both calls still count; shorter: only what is within the new window.
        w.expire(6_000, 2 * W, SLOTS);
        assert_eq!(w.used(), 6);
        w.expire(65_000, W / 6, SLOTS);
        assert_eq!(w.used(), 0);
        let mut w = window();
        w.spend(10, 4);
        w.spend(5_000, 2);
        w.expire(10_000, 8_000, SLOTS);
        assert_eq!(w.used(), 2, "the call at 10 left the 8 s window at 8,010");
    }
}
