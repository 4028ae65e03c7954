//! xorshift64*: a deterministic random source for tests, so a failure
//! reproduces from its seed.

pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A client address (1.0.0.0 to 223.255.255.255) and an odd port.
    pub fn client_v4(&mut self) -> (String, u16) {
        let r = self.next_u64();
        (
            format!(
                "{}.{}.{}.{}",
                1 + (r >> 8) % 223,
                (r >> 16) as u8,
                (r >> 24) as u8,
                (r >> 32) as u8
            ),
            (r >> 40) as u16 | 1,
        )
    }

    /// A client address in 2001:db8::/32 and an odd port.
    pub fn client_v6(&mut self) -> (String, u16) {
        let r = self.next_u64();
        (
            format!(
                "2001:db8:{:x}:{:x}::{:x}",
                (r >> 8) as u16,
                (r >> 24) as u16,
                (r >> 40) as u16
            ),
            (r >> 48) as u16 | 1,
        )
    }
}
