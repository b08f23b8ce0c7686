//! How much one read asks the transport for.
//!
//! Under wasmtime a read of N bytes costs a zeroed host buffer of N bytes whatever arrived, so asking for
//! 64 KiB on every read would make each round trip of small messages pay for 64 KiB. Natively the size costs
//! nothing until bytes arrive. The size therefore follows the traffic: it doubles after a read that filled it
//! (a large result is streaming) and halves after one that used less than a quarter of it.

/// The size of the next read, between [`ReadSize::MIN`] and [`ReadSize::MAX`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadSize(usize);

impl ReadSize {
    /// The first and smallest size.
    pub(crate) const MIN: usize = 4 * 1024;

    /// The largest size: wasmtime's limit for one read, and enough to stream a result in few reads. Buffers
    /// read into are this long.
    pub(crate) const MAX: usize = 64 * 1024;

    pub(crate) fn new() -> ReadSize {
        ReadSize(Self::MIN)
    }

    /// How many bytes the next read asks for.
    pub(crate) fn get(self) -> usize {
        self.0
    }

    /// Adapts the size to a read that returned `n` bytes.
    pub(crate) fn record(&mut self, n: usize) {
        if n >= self.0 {
            self.0 = (self.0 * 2).min(Self::MAX);
        } else if n < self.0 / 4 {
            self.0 = (self.0 / 2).max(Self::MIN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_while_reads_fill_it_and_shrinks_when_they_do_not() {
        let mut size = ReadSize::new();
        for _ in 0..10 {
            size.record(size.get());
        }
        assert_eq!(size.get(), ReadSize::MAX);
        // A read of half the size keeps it.
        size.record(ReadSize::MAX / 2);
        assert_eq!(size.get(), ReadSize::MAX);
        for _ in 0..10 {
            size.record(100);
        }
        assert_eq!(size.get(), ReadSize::MIN);
    }
}
