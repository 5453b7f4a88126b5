//! Per-transaction state that follows savepoints: what a subtransaction
//! changed is forgotten when it rolls back (`ROLLBACK TO SAVEPOINT`, a
//! PL/pgSQL exception block) and kept by its parent when it commits
//! (`RELEASE SAVEPOINT`). PostgreSQL numbers a transaction's subtransactions
//! upwards from [`TOP`] as they start, so an open subtransaction's number is
//! above its ancestors' and below its descendants'.

/// PostgreSQL's `TopSubTransactionId`: the top-level transaction.
pub const TOP: u32 = 1;

/// A value of the current transaction, and what it was before each open
/// subtransaction first changed it. Subtransactions that change nothing
/// cost nothing.
#[derive(Debug)]
pub struct Nested<T> {
    current: T,
    /// (subtransaction, the value before its first change), innermost last.
    saved: Vec<(u32, T)>,
}

impl<T: Clone + Default> Nested<T> {
    pub const fn new(value: T) -> Self {
        Nested {
            current: value,
            saved: Vec::new(),
        }
    }

    pub fn get(&self) -> &T {
        &self.current
    }

    /// Changes the value in subtransaction `sub`.
    pub fn change(&mut self, sub: u32, change: impl FnOnce(&mut T)) {
        if sub != TOP && self.saved.last().is_none_or(|&(s, _)| s != sub) {
            self.saved.push((sub, self.current.clone()));
        }
        change(&mut self.current);
    }

    /// `sub` committed into `parent`: its changes are now the parent's.
    pub fn commit_sub(&mut self, sub: u32, parent: u32) {
        let n = self.saved.len();
        if n == 0 || self.saved[n - 1].0 != sub {
            return;
        }
        if parent == TOP || (n >= 2 && self.saved[n - 2].0 == parent) {
            // The parent's own saved value (or none at the top) is the older one.
            self.saved.pop();
        } else {
            // The parent had changed nothing: the value before `sub` is its.
            self.saved[n - 1].0 = parent;
        }
    }

    /// `sub` rolled back: the value it (and any subtransaction inside it) found.
    pub fn abort_sub(&mut self, sub: u32) {
        let mut before = None;
        while self.saved.last().is_some_and(|&(s, _)| s >= sub) {
            before = self.saved.pop().map(|(_, value)| value);
        }
        if let Some(value) = before {
            self.current = value;
        }
    }

    /// The top-level transaction ended: its value, and a fresh one for the next.
    pub fn take(&mut self) -> T {
        self.saved.clear();
        std::mem::take(&mut self.current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(state: &mut Nested<u32>, sub: u32, n: u32) {
        state.change(sub, |v| *v += n);
    }

    #[test]
    fn a_rolled_back_savepoint_forgets_its_changes() {
        let mut state = Nested::new(0);
        add(&mut state, TOP, 1);
        add(&mut state, 2, 10); // SAVEPOINT a
        add(&mut state, 2, 10);
        state.abort_sub(2); // ROLLBACK TO a
        assert_eq!(*state.get(), 1);
        add(&mut state, 3, 100); // the savepoint again: a new subtransaction
        state.commit_sub(3, TOP); // RELEASE a
        assert_eq!(state.take(), 101);
        assert_eq!(*state.get(), 0);
    }

    #[test]
    fn nested_savepoints() {
        let mut state = Nested::new(0);
        // SAVEPOINT a (2), SAVEPOINT b (3): only b changes; RELEASE b; ROLLBACK TO a.
        add(&mut state, 3, 5);
        state.commit_sub(3, 2);
        assert_eq!(*state.get(), 5);
        state.abort_sub(2);
        assert_eq!(*state.get(), 0);

        // a (4) changes, b (5) changes, b rolls back, a commits.
        add(&mut state, 4, 1);
        add(&mut state, 5, 2);
        state.abort_sub(5);
        assert_eq!(*state.get(), 1);
        state.commit_sub(4, TOP);
        assert_eq!(*state.get(), 1);

        // a (6), b (7), c (8) each change; ROLLBACK TO a undoes all three.
        add(&mut state, 6, 10);
        add(&mut state, 7, 20);
        add(&mut state, 8, 30);
        state.abort_sub(6);
        assert_eq!(*state.get(), 1);

        // a (9) changes, b (10) changes and commits into a, a commits.
        add(&mut state, 9, 10);
        add(&mut state, 10, 20);
        state.commit_sub(10, 9);
        state.commit_sub(9, TOP);
        assert_eq!(state.take(), 31);
    }

    #[test]
    fn subtransactions_that_change_nothing_leave_nothing() {
        let mut state = Nested::new(0);
        add(&mut state, TOP, 1);
        state.commit_sub(2, TOP);
        state.abort_sub(3);
        assert_eq!(*state.get(), 1);
        assert!(state.saved.is_empty());
    }
}
