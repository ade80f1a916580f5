//! Placement of waiting miners on GPU slots: pure, so its invariants are property-tested. A slot is
//! booked at most once, only a free slot (in service: not drained, not quarantined, not busy) takes a
//! run, and when the round is pinned to one GPU model only slots of that model are used, so every
//! timing of a round is comparable. Tickets are taken in the order given (the store's fair order).

use std::collections::BTreeMap;

/// What placement needs to know about one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotView<'a> {
    /// GPU model (marketing name).
    pub model: &'a str,
    /// In service: not drained and not quarantined.
    pub in_service: bool,
    /// Running an evaluation now.
    pub busy: bool,
}

impl SlotView<'_> {
    /// Can take a run now.
    pub fn free(&self) -> bool {
        self.in_service && !self.busy
    }
}

/// One decision: ticket `ticket` (index into the waiting list) runs on slot `slot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Index into the waiting tickets.
    pub ticket: usize,
    /// Index into the slots.
    pub slot: usize,
}

/// The model a round should be measured on: the one with the most slots in service (busy included),
/// ties broken by name so the choice is deterministic. `None` when no slot is in service.
pub fn choose_model<'a>(slots: &[SlotView<'a>]) -> Option<&'a str> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in slots.iter().filter(|s| s.in_service) {
        *counts.entry(s.model).or_default() += 1;
    }
    // max_by_key keeps the last maximum; iterate in reverse name order so the smallest name wins.
    counts.into_iter().rev().max_by_key(|(_, n)| *n).map(|(m, _)| m)
}

/// Place the first `waiting` tickets on free slots (of `model` when given), in slot order.
pub fn place(waiting: usize, slots: &[SlotView<'_>], model: Option<&str>) -> Vec<Placement> {
    slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.free() && model.is_none_or(|m| s.model == m))
        .take(waiting)
        .enumerate()
        .map(|(ticket, (slot, _))| Placement { ticket, slot })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const MODELS: [&str; 3] = ["A100", "H100", "L4"];

    fn view(model: usize, in_service: bool, busy: bool) -> SlotView<'static> {
        SlotView {
            model: MODELS[model % MODELS.len()],
            in_service,
            busy,
        }
    }

    #[test]
    fn four_free_slots_take_four_of_eight_tickets() {
        let slots: Vec<_> = (0..4).map(|_| view(0, true, false)).collect();
        let p = place(8, &slots, None);
        assert_eq!(p.len(), 4);
        assert_eq!(p.iter().map(|p| p.ticket).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn drained_quarantined_and_busy_slots_are_skipped() {
        let slots = vec![view(0, false, false), view(0, true, true), view(0, true, false)];
        assert_eq!(place(3, &slots, None), vec![Placement { ticket: 0, slot: 2 }]);
    }

    #[test]
    fn the_majority_model_wins_and_ties_go_to_the_smaller_name() {
        let slots = vec![
            view(1, true, false),
            view(0, true, true),
            view(1, true, false),
            view(2, false, false),
        ];
        assert_eq!(choose_model(&slots), Some("H100"));
        let tie = vec![view(1, true, false), view(0, true, false)];
        assert_eq!(choose_model(&tie), Some("A100"));
        assert_eq!(choose_model(&[view(0, false, false)]), None);
    }

    proptest! {
        #[test]
        fn placement_invariants(
            raw in proptest::collection::vec((0usize..3, any::<bool>(), any::<bool>()), 0..16),
            waiting in 0usize..20,
            pin in any::<bool>(),
        ) {
            let slots: Vec<_> = raw.iter().map(|(m, s, b)| view(*m, *s, *b)).collect();
            let model = if pin { choose_model(&slots) } else { None };
            let p = place(waiting, &slots, model);
            let used: BTreeSet<usize> = p.iter().map(|p| p.slot).collect();
            prop_assert_eq!(used.len(), p.len(), "a slot was double-booked");
            let tickets: BTreeSet<usize> = p.iter().map(|p| p.ticket).collect();
            prop_assert_eq!(tickets.len(), p.len(), "a ticket was placed twice");
            for x in &p {
                prop_assert!(x.ticket < waiting);
                prop_assert!(slots[x.slot].free());
                if let Some(m) = model { prop_assert_eq!(slots[x.slot].model, m); }
            }
            // Maximal: nothing eligible is left idle while tickets wait.
            let eligible = slots.iter().filter(|s| s.free() && model.is_none_or(|m| s.model == m)).count();
            prop_assert_eq!(p.len(), eligible.min(waiting));
        }
    }
}
